"""Synthetic "toy concept world": coloured, textured shapes with captions.

Every image is a single shape (the *object* concept) rendered in one of several
textures (the *style* concept) and colours on a plain light background. All
randomness flows through a ``numpy.random.Generator`` so that images and captions
are fully deterministic given a seed.

Textures are laid out on a *global* pixel grid (not relative to the shape). This
keeps their phase fixed, which lets a VAE with 4x downsampling reconstruct them
crisply: the decoder only has to know "this 4x4 cell is checkered/dotted/...".
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
STYLES: tuple[str, ...] = ("solid", "striped", "dotted", "outlined", "checkered")
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.12, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.05),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

IMAGE_SIZE = 32
BACKGROUND = np.array([0.92, 0.92, 0.92], dtype=np.float32)
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered for anti-aliasing
_PATTERN_DARKEN = 0.25  # pattern pixels are the shape colour times this factor

# Noun phrases used by "a {obj} with {...}" templates.
_STYLE_NOUNS: dict[str, str] = {
    "solid": "a solid fill",
    "striped": "stripes",
    "dotted": "dots",
    "outlined": "an outline",
    "checkered": "a checker pattern",
}

# Caption templates used for training. ``{c}`` colour, ``{s}`` style adjective,
# ``{o}`` object noun, ``{n}`` style noun phrase. Parts may be dropped (see
# ``make_caption``), which is why templates exist for every subset.
_TEMPLATES_FULL = (
    "a {c} {s} {o}",
    "a {s} {c} {o}",
    "a {c} {o} in {s} style",
    "a picture of a {c} {s} {o}",
    "a {c} {o} with {n}",
)
_TEMPLATES_NO_COLOR = (
    "a {s} {o}",
    "a {o} in {s} style",
    "a picture of a {s} {o}",
    "a drawing of a {s} {o}",
    "a {o} with {n}",
)
_TEMPLATES_NO_STYLE = ("a {c} {o}", "a picture of a {c} {o}", "a drawing of a {c} {o}")
_TEMPLATES_OBJ_ONLY = ("a {o}", "a picture of a {o}", "a drawing of a {o}", "an image of a {o}")
_TEMPLATES_NO_OBJ = ("a {c} {s} shape", "a {s} shape", "something in {s} style", "a shape with {n}")


def _shape_mask(obj: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Draw a binary mask of ``obj`` at ``_SUPERSAMPLE`` x resolution.

    Args:
        obj: Object name from ``OBJECTS``.
        cx: Centre x in output pixels.
        cy: Centre y in output pixels.
        r: Radius (half the extent) in output pixels.
        size: Output image side length.

    Returns:
        Boolean array of shape ``(size * S, size * S)``.
    """
    s = _SUPERSAMPLE
    img = Image.new("L", (size * s, size * s), 0)
    d = ImageDraw.Draw(img)
    X, Y, R = cx * s, cy * s, r * s
    if obj == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif obj == "square":
        q = R * 0.85  # squares look bigger than circles of equal radius
        d.rectangle([X - q, Y - q, X + q, Y + q], fill=255)
    elif obj == "triangle":
        pts = [(X + R * np.cos(a), Y + R * 1.1 * np.sin(a) + R * 0.15)
               for a in np.deg2rad([-90, 30, 150])]
        d.polygon(pts, fill=255)
    elif obj == "star":
        pts = []
        for k in range(10):
            a = np.deg2rad(-90 + 36 * k)
            rr = R if k % 2 == 0 else R * 0.45
            pts.append((X + rr * np.cos(a), Y + rr * np.sin(a)))
        d.polygon(pts, fill=255)
    elif obj == "cross":
        w = R * 0.36
        d.rectangle([X - R, Y - w, X + R, Y + w], fill=255)
        d.rectangle([X - w, Y - R, X + w, Y + R], fill=255)
    else:
        raise ValueError(f"unknown object {obj!r}")
    return np.asarray(img) > 127


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion with a (2k+1)^2 square, via k rounds of 3x3 min-filter."""
    m = mask.copy()
    for _ in range(k):
        p = np.pad(m, 1, constant_values=False)
        out = np.ones_like(m)
        for dy in range(3):
            for dx in range(3):
                out &= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
        m = out
    return m


def _pattern(style: str, size: int) -> np.ndarray:
    """Return a float mask in [0, 1] of "dark pattern" pixels on the global grid."""
    y, x = np.mgrid[0:size, 0:size]
    if style == "striped":
        return (((x + y) // 3) % 2 == 0).astype(np.float32)  # diagonal, period 6
    if style == "dotted":
        # Round soft dots (~5 px, period 6, ~45% cover). Tiny 2x2 dots were lost
        # by the 4x-downsampling VAE (reconstructed as "solid").
        dist = np.hypot((x % 6) - 2.5, (y % 6) - 2.5)
        return np.clip(2.8 - dist, 0.0, 1.0).astype(np.float32)
    if style == "checkered":
        return (((x // 4) + (y // 4)) % 2 == 0).astype(np.float32)
    return np.zeros((size, size), np.float32)


def render(obj: str, style: str, color: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one image.

    Args:
        obj: Object concept (one of ``OBJECTS``).
        style: Style concept (one of ``STYLES``).
        color: Colour name (one of ``COLOR_NAMES``).
        rng: Random generator used for the size and position.
        size: Output side length in pixels.

    Returns:
        ``float32`` array of shape ``(size, size, 3)`` with values in [0, 1].
    """
    r = rng.uniform(0.26, 0.42) * size
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    hi = _shape_mask(obj, cx, cy, r, size)
    if style == "outlined":
        # Border of ~2.5 output pixels: thick enough to survive the VAE.
        hi = hi & ~_erode(hi, int(2.5 * _SUPERSAMPLE))
    s = _SUPERSAMPLE
    alpha = hi.reshape(size, s, size, s).mean(axis=(1, 3)).astype(np.float32)
    col = np.asarray(COLORS[color], np.float32)
    pat = _pattern(style, size)[..., None]
    fill = col * (1 - pat) + col * _PATTERN_DARKEN * pat
    img = BACKGROUND * (1 - alpha[..., None]) + fill * alpha[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def to_pil(img: np.ndarray) -> Image.Image:
    """Convert an ``(H, W, 3)`` float image in [0, 1] to a PIL image."""
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def make_caption(obj: str, style: str, color: str, rng: np.random.Generator) -> str:
    """Sample a caption for an image, randomly dropping colour/style/object words.

    Dropping words teaches the model that "a triangle" alone means a triangle in
    any style; ~10% of captions are empty for classifier-free guidance.
    """
    u = rng.random()
    if u < 0.10:
        return ""
    fields = {"c": color, "s": style, "o": obj, "n": _STYLE_NOUNS[style]}
    if u < 0.40:
        pool = _TEMPLATES_FULL
    elif u < 0.58:
        pool = _TEMPLATES_NO_COLOR
    elif u < 0.70:
        pool = _TEMPLATES_NO_STYLE
    elif u < 0.85:
        pool = _TEMPLATES_OBJ_ONLY
    else:
        pool = _TEMPLATES_NO_OBJ
    return pool[rng.integers(len(pool))].format(**fields)


def sample_batch(n: int, rng: np.random.Generator, size: int = IMAGE_SIZE
                 ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Sample ``n`` random images with captions and labels.

    Args:
        n: Batch size.
        rng: Random generator (the only source of randomness).
        size: Image side length.

    Returns:
        ``(images, captions, obj_idx, style_idx)`` where ``images`` is
        ``float32 (n, 3, size, size)`` in [0, 1].
    """
    objs = rng.integers(len(OBJECTS), size=n)
    styles = rng.integers(len(STYLES), size=n)
    cols = rng.integers(len(COLOR_NAMES), size=n)
    imgs = np.empty((n, 3, size, size), np.float32)
    caps: list[str] = []
    for i in range(n):
        o, s, c = OBJECTS[objs[i]], STYLES[styles[i]], COLOR_NAMES[cols[i]]
        imgs[i] = render(o, s, c, rng, size).transpose(2, 0, 1)
        caps.append(make_caption(o, s, c, rng))
    return imgs, caps, objs.astype(np.int64), styles.astype(np.int64)


def object_prompts(obj: str) -> list[str]:
    """Several phrasings that ask for ``obj`` (in any style and colour)."""
    if obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}")
    return [f"a picture of a {obj}", f"a {obj}", f"a drawing of a {obj}",
            f"an image of a {obj}", f"a red {obj}", f"a blue {obj}"]


def style_prompts(style: str) -> list[str]:
    """Several phrasings that ask for ``style`` (on any object)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}")
    n = _STYLE_NOUNS[style]
    return [f"a {style} shape", f"something in {style} style", f"a shape with {n}",
            f"a {style} circle", f"a square in {style} style", f"a picture of a {style} star"]


def vocabulary() -> list[str]:
    """All words that can appear in captions or prompts (for the tokenizer)."""
    words: set[str] = set(OBJECTS) | set(STYLES) | set(COLOR_NAMES) | {"shape"}
    all_templates = (_TEMPLATES_FULL + _TEMPLATES_NO_COLOR + _TEMPLATES_NO_STYLE
                     + _TEMPLATES_OBJ_ONLY + _TEMPLATES_NO_OBJ)
    for t in all_templates:
        for w in t.split():
            if "{" not in w:
                words.add(w)
    for n in _STYLE_NOUNS.values():
        words.update(n.split())
    for o in OBJECTS:
        for p in object_prompts(o):
            words.update(p.split())
    for s in STYLES:
        for p in style_prompts(s):
            words.update(p.split())
    return sorted(words)
