"""Seeded, batched image generation with a content-addressed cache.

Each image's initial latent comes from its own CPU generator seeded with the item's seed, so an image does
not depend on batch size, batch order or device. Images are stored under a key made of the pipeline's
weight fingerprint and the sampler settings: the original model's images are generated once and reused by
every method, seed and evaluator that asks for them. A cached file is checked whenever it is used; a damaged
one is moved aside (``*.png.corrupt``) and rendered again, the same image since the seed is the item's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from erasebench.api import PromptItem
from erasebench.results import atomic_path, atomic_write_text, quarantine

COMPONENTS = ("unet", "text_encoder", "vae")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, its fixed CRC
_UNDECODABLE = (OSError, SyntaxError, ValueError, zlib.error)  # how PIL reports a broken file


@dataclass(frozen=True)
class Sampler:
    """Sampling settings; every one of them changes the images, so all are part of the cache key."""

    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    eta: float = 0.0
    negative_prompt: str = ""

    def key(self) -> str:
        """A short stable hash of the settings."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def tensor_digest(t: torch.Tensor) -> str:
    """Hash of a tensor's dtype, shape and bytes."""
    # reshape(-1): a channels-last 1x1 conv weight counts as contiguous yet keeps a last stride != 1
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    h = hashlib.blake2b(data, digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    return h.hexdigest()


def _version_stamp(pipe: Any) -> tuple:
    # In-place edits bump a tensor's _version and assignments change its storage pointer, so this cheap
    # stamp tells us whether the expensive byte hash must be recomputed.
    return tuple((p.data_ptr(), p._version) for c in COMPONENTS for p in getattr(pipe, c).state_dict().values())


def weight_digests(pipe: Any) -> dict[str, str]:
    """``component.tensor_name`` -> digest for every weight of the UNet, text encoder and VAE."""
    return {f"{c}.{k}": tensor_digest(v) for c in COMPONENTS for k, v in getattr(pipe, c).state_dict().items()}


def fingerprint(pipe: Any) -> str:
    """A hash of every weight of the pipeline, memoised on the pipeline until a weight changes."""
    stamp = _version_stamp(pipe)
    memo = getattr(pipe, "_erasebench_fingerprint", None)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    digests = weight_digests(pipe)
    fp = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()[:24]
    pipe._erasebench_fingerprint = (stamp, fp)
    return fp


@contextlib.contextmanager
def _locked(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive advisory lock on ``path`` (released when the block ends or the process dies)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_save(img: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:  # removes the temporary file if the save fails (a full disk)
        img.save(tmp, format="PNG")


def png_intact(path: Path) -> bool:
    """Whether ``path`` starts with the PNG signature and ends with the IEND chunk: a cheap check, without
    decoding, that catches a truncated or overwritten file (``False`` for a missing one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_PNG_SIGNATURE))
            if f.seek(0, os.SEEK_END) < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            f.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and f.read() == _PNG_END
    except FileNotFoundError:
        return False


def _decode(path: Path) -> Image.Image | None:
    # The RGB image, or None if the file is missing or PIL cannot decode it.
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except _UNDECODABLE:
        return None


class ImageCache:
    """Generate images through a directory cache.

    Args:
        root: Cache directory; one sub-directory per (weights, sampler) key.
        sampler: The sampling settings.
        batch_size: Images per pipeline call.
        progress: Show a progress bar.

    Attributes:
        generated: Number of images actually generated (not read from the cache), for tests and logs.
    """

    def __init__(self, root: Path, sampler: Sampler, batch_size: int = 8, progress: bool = True) -> None:
        self.root, self.sampler, self.batch_size, self.progress = Path(root), sampler, batch_size, progress
        self.generated = 0

    def directory(self, pipe: Any, weights: str | None = None) -> Path:
        """The cache directory for the pipeline's current weights (or a given fingerprint) and the sampler."""
        return self.root / f"{weights or fingerprint(pipe)}-{self.sampler.key()}"

    @staticmethod
    def filename(item: PromptItem) -> str:
        """File name of an item's image: a hash of the prompt, then the seed (and its own guidance scale)."""
        g = "" if item.guidance is None else f"_g{item.guidance:g}"
        return f"{hashlib.sha256(item.prompt.encode()).hexdigest()[:16]}_{item.seed}{g}.png"

    def paths(self, pipe: Any, items: Sequence[PromptItem]) -> list[Path]:
        """Paths of the images of ``items``, generating the missing ones."""
        d = self.directory(pipe)
        d.mkdir(parents=True, exist_ok=True)
        meta = d / "sampler.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"fingerprint": fingerprint(pipe), **asdict(self.sampler)}, indent=1))
        paths = [d / self.filename(it) for it in items]
        if all(png_intact(p) for p in paths):  # files appear by rename, so a failed check is real damage
            return paths
        # Parallel jobs of a sweep often need the same (original-model) images: the first one to take the
        # lock renders them, the others wait and then find them on disk.
        # PNG encoding runs in a thread pool while the next batch is sampled (zlib releases the GIL).
        with _locked(d / ".lock"), ThreadPoolExecutor(max_workers=2) as pool:
            # Checked again under the lock: another job may have replaced a damaged file meanwhile.
            todo = list({p: it for p, it in zip(paths, items) if not self._usable(p)}.items())
            # Items with their own guidance scale are batched with their peers (one pipeline call per scale).
            todo.sort(key=lambda x: -1.0 if x[1].guidance is None else x[1].guidance)
            bar = tqdm(total=len(todo), desc="generate", unit="img", disable=not self.progress or not todo)
            saving = []
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                images = self._generate(pipe, [it for _, it in chunk])
                saving += [pool.submit(_atomic_save, img, path) for (path, _), img in zip(chunk, images)]
                self.generated += len(chunk)
                bar.update(len(chunk))
            for f in saving:
                f.result()  # re-raises a failed write before the lock is released
            bar.close()
        return paths

    def __call__(self, pipe: Any, items: Sequence[PromptItem]) -> list[Image.Image]:
        """The images of ``items`` as RGB PIL images (cached or generated; a cached file that fails to decode
        is quarantined and rendered again)."""
        images = self._read(self.paths(pipe, items))
        bad = [i for i, img in enumerate(images) if img is None]
        for i, path in zip(bad, self.paths(pipe, [items[i] for i in bad]) if bad else []):
            with Image.open(path) as im:  # a fresh render that fails too is a disk problem: PIL's error says so
                images[i] = im.convert("RGB")
        return images  # type: ignore[return-value]  # no None is left

    def cached(self, weights: str, items: Sequence[PromptItem]) -> list[Image.Image] | None:
        """The images of ``items`` rendered with weight fingerprint ``weights``, if every one is cached and
        intact, else ``None``: render them through the cache then, which quarantines a damaged file and
        replaces it (one that fails to decode is quarantined here already).

        Args:
            weights: The :func:`fingerprint` of the pipeline that rendered them.
            items: The images wanted.
        """
        d = self.directory(None, weights)
        paths = [d / self.filename(it) for it in items]
        if not all(png_intact(p) for p in paths):
            return None
        images = self._read(paths)
        return None if any(img is None for img in images) else images  # type: ignore[return-value]

    @staticmethod
    def _usable(path: Path) -> bool:
        # Whether path holds an intact PNG; a damaged one is quarantined. Called under the directory's lock.
        if png_intact(path):
            return True
        if path.exists():
            quarantine(path, "not a complete PNG file (its signature or IEND chunk is missing)")
        return False

    @staticmethod
    def _read(paths: Sequence[Path]) -> list[Image.Image | None]:
        # The decoded images; one that fails to decode is quarantined and None in the list.
        images = [_decode(p) for p in paths]
        if all(img is not None for img in images):
            return images
        with _locked(paths[0].parent / ".lock"):
            for i, path in enumerate(paths):
                if images[i] is None and path.exists():
                    images[i] = _decode(path)  # another job may have replaced it meanwhile
                    if images[i] is None:
                        quarantine(path, "PIL cannot decode it as an image")
        return images

    def _generate(self, pipe: Any, items: Sequence[PromptItem]) -> list[Image.Image]:
        return self.render(pipe, items)

    def render(self, pipe: Any, items: Sequence[PromptItem], prompt_embeds: torch.Tensor | None = None
               ) -> list[Image.Image]:
        """Render ``items`` with the sampler, bypassing the cache: one pipeline call per guidance scale.

        Args:
            pipe: The pipeline.
            items: Images to render (their seeds and guidance scales); the caller batches.
            prompt_embeds: ``[len(items), tokens, dim]`` text states used instead of encoding the prompts (attacks
                that perturb them); the starting noise is still each item's own.
        """
        out: dict[int, Image.Image] = {}
        for g in dict.fromkeys(it.guidance for it in items):
            idx = [i for i, it in enumerate(items) if it.guidance == g]
            embeds = None if prompt_embeds is None else prompt_embeds[idx]
            out |= dict(zip(idx, self._render_one_scale(pipe, [items[i] for i in idx],
                                                        self.sampler.guidance_scale if g is None else g, embeds)))
        return [out[i] for i in range(len(items))]

    @torch.no_grad()
    def _render_one_scale(self, pipe: Any, items: Sequence[PromptItem], guidance: float,
                          prompt_embeds: torch.Tensor | None) -> list[Image.Image]:
        s = self.sampler
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, s.height // scale, s.width // scale)
        # One CPU generator per image: the starting noise is identical whatever the batch or device.
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(it.seed)) for it in items])
        unet_param = next(pipe.unet.parameters())
        text = ({"prompt": [it.prompt for it in items]} if prompt_embeds is None else
                {"prompt_embeds": prompt_embeds.to(device=unet_param.device, dtype=unet_param.dtype)})
        out = pipe(
            **text,
            negative_prompt=[s.negative_prompt] * len(items) if s.negative_prompt else None,
            latents=latents.to(device=unet_param.device, dtype=unet_param.dtype),
            num_inference_steps=s.steps,
            guidance_scale=guidance,
            eta=s.eta,
            height=s.height,
            width=s.width,
            output_type="pil",
        )
        return out.images
