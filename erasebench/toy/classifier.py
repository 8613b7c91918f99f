"""Toy classifier: a small CNN that names the object and style of a toy image.

Used by the benchmark as the "concept detector" (does a generated image still
show the erased concept?) and, through :meth:`ToyClassifier.features`, as the
feature extractor of a "toy FID". It is trained on freshly rendered images with
mild noise/blur/colour-jitter augmentation, so that it stays reliable on the
slightly imperfect images the diffusion model produces.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from .data import IMAGE_SIZE, OBJECTS, STYLES, sample_batch


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :class:`ToyClassifier` (saved as JSON)."""

    widths: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = 128
    image_size: int = IMAGE_SIZE
    objects: tuple[str, ...] = OBJECTS
    styles: tuple[str, ...] = STYLES


class ToyClassifier(nn.Module):
    """Three conv stages -> global average pool -> object head and style head."""

    def __init__(self, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ClassifierConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for i, w in enumerate(self.cfg.widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(self.cfg.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(c_in, self.cfg.feature_dim), nn.ReLU(inplace=True))
        self.obj_head = nn.Linear(self.cfg.feature_dim, len(self.cfg.objects))
        self.style_head = nn.Linear(self.cfg.feature_dim, len(self.cfg.styles))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, feature_dim)`` of images ``x`` in [0, 1]."""
        h = self.body(x * 2 - 1)
        return self.proj(h.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(object_logits, style_logits)`` for images ``x`` in [0, 1]."""
        f = self.features(x)
        return self.obj_head(f), self.style_head(f)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur / noise / brightness jitter, mimicking generator imperfections."""
    b = x.shape[0]
    blur_mask = (torch.rand(b, 1, 1, 1, generator=g) < 0.3).float()
    k = torch.tensor([0.25, 0.5, 0.25])
    k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = blur_mask * blurred + (1 - blur_mask) * x
    x = x * (1 + 0.1 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5))
    x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.06 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def train_classifier(steps: int, seed: int, batch_size: int = 64, lr: float = 2e-3,
                     show_progress: bool = True) -> ToyClassifier:
    """Train a :class:`ToyClassifier` on freshly rendered images.

    Args:
        steps: Optimisation steps (each on a new batch).
        seed: Seed for data, augmentation and initialisation.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (cosine decay after 5% warmup).
        show_progress: Show a tqdm bar.

    Returns:
        The trained model in eval mode.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    model.train()
    bar = tqdm(range(steps), desc="classifier", disable=not show_progress)
    for _ in bar:
        imgs, _, obj, sty = sample_batch(batch_size, rng)
        x = _augment(torch.from_numpy(imgs), g)
        lo, ls = model(x)
        loss = F.cross_entropy(lo, torch.from_numpy(obj)) + F.cross_entropy(ls, torch.from_numpy(sty))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy_on_fresh(model: ToyClassifier, n: int, seed: int) -> tuple[float, float]:
    """Object and style accuracy on ``n`` freshly rendered (un-augmented) images."""
    imgs, _, obj, sty = sample_batch(n, np.random.default_rng(seed))
    po, ps = predict(model, torch.from_numpy(imgs))
    return float((po.numpy() == obj).mean()), float((ps.numpy() == sty).mean())


def save_classifier(model: ToyClassifier, weights: str | Path, config: str | Path) -> None:
    """Save weights (safetensors) and a JSON config."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    Path(config).write_text(json.dumps(asdict(model.cfg), indent=2))


def load_classifier(device: str = "cpu", assets_dir: str | Path | None = None) -> ToyClassifier:
    """Load the trained toy classifier from the assets directory (eval mode).

    Raises:
        ToyAssetsMissingError: If the classifier has not been trained.
    """
    from . import classifier_paths

    weights, config = classifier_paths(assets_dir)
    raw = json.loads(Path(config).read_text())
    cfg = ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = ToyClassifier(cfg)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()


def to_tensor(images: torch.Tensor | Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """Convert PIL images / HWC uint8 arrays / BCHW float tensors to BCHW float [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    if isinstance(images, np.ndarray):
        arr = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
        return torch.from_numpy(arr if arr.shape[-3] == 3 else np.moveaxis(arr, -1, -3))
    arrs = [np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2))


@torch.no_grad()
def predict(model: ToyClassifier, images: torch.Tensor | Sequence[Image.Image] | np.ndarray,
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted ``(object_idx, style_idx)`` for a batch of images."""
    x = to_tensor(images)
    dev = next(model.parameters()).device
    if x.shape[-1] != model.cfg.image_size:
        x = F.interpolate(x, size=model.cfg.image_size, mode="bilinear", antialias=True)
    outs_o, outs_s = [], []
    for i in range(0, len(x), batch_size):
        lo, ls = model(x[i:i + batch_size].to(dev))
        outs_o.append(lo.argmax(1).cpu())
        outs_s.append(ls.argmax(1).cpu())
    return torch.cat(outs_o), torch.cat(outs_s)


_CACHED: dict[str, ToyClassifier] = {}


def classify(images: torch.Tensor | Sequence[Image.Image] | np.ndarray,
             device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Classify images with the saved toy classifier (loaded once, cached).

    Args:
        images: PIL images, or a float tensor ``(B, 3, H, W)`` in [0, 1].
        device: Torch device.

    Returns:
        ``(obj_pred, style_pred)`` index tensors into ``OBJECTS`` / ``STYLES``.
    """
    if device not in _CACHED:
        _CACHED[device] = load_classifier(device)
    return predict(_CACHED[device], images)
