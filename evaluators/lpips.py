"""Paired LPIPS between the erased model's image and the original model's image of the same prompt and seed.

Protocol (``eval-protocol.md`` §3; ESD ``evalscripts/lpips_eval.py``, AdvAnchor ``eval-scripts/lpips_eval.py``):
``lpips`` package, AlexNet trunk, v0.1 linear heads; each image is resized with torchvision's
``Resize(64)`` on the PIL image (PIL bilinear, shorter side to 64 px) and scaled to [-1, 1]; the metric is the
mean distance over the pairs of a split. ``resize: 64`` is the default because both papers do it (it makes
LPIPS look at coarse structure only); ``resize: null`` compares at native resolution. The setting is recorded.

Toy backend (``backbone_weights: toy_classifier``): the toy world has no AlexNet, so LPIPS is computed in its
*baseline* form (Zhang et al. 2018, "lin" heads off: unit-normalise each layer's features over channels, squared
difference summed over channels, averaged over space, summed over layers; the ``lpips`` package's
``lpips=False``) on the three conv stages of the toy classifier, at native resolution. It is reported as
``toy_lpips`` so a toy number never sits in an LPIPS column.

Reading the numbers: on the ``preserve`` split a low LPIPS means the other concepts' images survived; on the
``erase`` split a *high* LPIPS means the erased concept's images changed (ESD/AdvAnchor report both). The
harness declares one direction per metric, so ``lpips`` is declared lower-is-better; read the erase split
the other way round.

Offline: the linear heads ship in the ``lpips`` wheel and are loaded here with ``torch.load(weights_only=True)``;
the AlexNet trunk (``alexnet-owt-7be5be79.pth``) is built with ``pnet_rand=True`` (no download) and filled from
the torch.hub cache (see :mod:`erasebench.weights`). ``backbone_weights: random_init_test`` keeps a seeded
random trunk, for tests only.

Deviations: none in the computation. ``lpips`` 0.1.4 would fetch the trunk through torchvision's deprecated
``pretrained=True``; the same file (IMAGENET1K_V1) is loaded explicitly instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erasebench.evaluators._common import RANDOM_TEST, batches, load_state_dict, seeded

from erasebench import weights
from erasebench.api import Evaluator, MetricInfo, RunContext, Score, Task
from erasebench.errors import ConfigError
from erasebench.registry import register_evaluator

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

ALEXNET_KEY = "alexnet_imagenet1k_v1"
TOY_KEY = "toy_classifier"
#: AlexNet ``features`` indices held by each slice of ``lpips.pretrained_networks.alexnet``.
_SLICES = {"slice1": range(2), "slice2": range(2, 5), "slice3": range(5, 8), "slice4": range(8, 10),
           "slice5": range(10, 12)}


def build_lpips(backbone_weights: str, device: Any = "cpu") -> torch.nn.Module:
    """An ``lpips.LPIPS`` AlexNet v0.1 model, built without any download.

    Args:
        backbone_weights: ``alexnet_imagenet1k_v1`` (from the torch.hub cache) or ``random_init_test``.
        device: Torch device.

    Raises:
        MissingFileError: The AlexNet file is not cached.
    """
    import lpips
    import torchvision

    trunk = None
    if backbone_weights == ALEXNET_KEY:  # check the file before building anything
        path = weights.require(ALEXNET_KEY, "evaluator 'lpips'")
        trunk = torchvision.models.alexnet()
        trunk.load_state_dict(load_state_dict(path))
    # pretrained=False: the heads are loaded below with weights_only=True; pnet_rand=True: no trunk download.
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`; harmless here
        warnings.simplefilter("ignore", UserWarning)
        model = seeded(lambda: lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True,
                                           verbose=False))
    heads = load_state_dict(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth")
    missing, unexpected = model.load_state_dict(heads, strict=False)
    # `lins.N.*` are aliases of `linN.*` (the same modules in a ModuleList), so only `linN` must be loaded.
    if unexpected or any(k.startswith("lin") and not k.startswith("lins.") for k in missing):
        raise RuntimeError(f"lpips heads do not match the model: missing {missing}, unexpected {unexpected}")
    if trunk is not None:
        for name, idx in _SLICES.items():
            for i in idx:
                getattr(model.net, name)._modules[str(i)].load_state_dict(trunk.features[i].state_dict())
    return model.to(device).eval()


class ToyLPIPS:
    """Baseline LPIPS (no learned heads) on the toy classifier's three conv stages; inputs in [-1, 1]."""

    def __init__(self, device: Any = "cpu") -> None:
        from erasebench.toy.classifier import load_classifier

        self.model = load_classifier(str(device))
        # The end of each stage (after its second ReLU), i.e. before the pooling that starts the next one.
        relus = [i for i, m in enumerate(self.model.body) if m.__class__.__name__ == "ReLU"]
        self.taps = set(relus[1::2])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pair distance ``(B,)``."""
        import lpips

        total = 0
        fx, fy = x, y  # the classifier's body takes [-1, 1] (ToyClassifier.features maps [0, 1] there)
        for i, layer in enumerate(self.model.body):
            fx, fy = layer(fx), layer(fy)
            if i in self.taps:
                d = (lpips.normalize_tensor(fx) - lpips.normalize_tensor(fy)) ** 2
                total = total + lpips.spatial_average(d.sum(dim=1, keepdim=True))
        return total.reshape(-1)  # type: ignore[union-attr]


def prepare(images: list[Image], resize: int | None) -> torch.Tensor:
    """PIL images -> ``(B, 3, H, W)`` in [-1, 1], after torchvision's ``Resize(resize)`` (PIL bilinear)."""
    import numpy as np
    import torch

    out = []
    for im in images:
        im = im.convert("RGB")
        if resize is not None:
            w, h = im.size  # shorter side -> resize, aspect kept (torchvision Resize(int) semantics)
            size = (resize, max(1, round(h * resize / w))) if w <= h else (max(1, round(w * resize / h)), resize)
            from PIL import Image as PILImage

            im = im.resize(size, PILImage.BILINEAR)
        out.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@register_evaluator("lpips")
class LPIPS(Evaluator):
    """Mean paired LPIPS (AlexNet, v0.1) between erased and original images, per split."""

    display_name = "LPIPS"

    @classmethod
    def describe(cls, settings: Mapping[str, Any]) -> str:
        """The trunk's weights (the toy world's classifier, or AlexNet with LPIPS' linear heads)."""
        return f"weights {settings['backbone_weights']}" if settings.get("backbone_weights") else ""

    higher_is_better = {"lpips": False, "toy_lpips": False}
    # Distance to the original model's image of the same prompt and seed: on the erase split erasing should
    # move far from it (higher is better), on the preserve split stay close (lower), as AdvAnchor judges.
    metrics = {(split, name): MetricInfo(split == "erase", label)
               for name, label in (("lpips", "LPIPS"), ("toy_lpips", "toy LPIPS")) for split in ("erase", "preserve")}
    needs_original = True
    smoke_settings = {"backbone_weights": RANDOM_TEST}

    @dataclass
    class Config:
        """Settings (defaults: ESD / AdvAnchor).

        Attributes:
            net: LPIPS trunk; only ``alex`` (the papers' choice).
            version: LPIPS head version.
            backbone_weights: ``alexnet_imagenet1k_v1``, ``toy_classifier`` (toy world; reported as
                ``toy_lpips``) or ``random_init_test`` (tests only).
            resize: Shorter side in px before LPIPS (ESD/AdvAnchor: 64), or None for native resolution.
            resize_mode: How images are resized (recorded; only ``pil_bilinear``, torchvision's Resize on PIL).
            batch_size: Pairs per forward pass.
        """

        net: str = "alex"
        version: str = "0.1"
        backbone_weights: str = ALEXNET_KEY
        resize: int | None = 64
        resize_mode: str = "pil_bilinear"
        batch_size: int = 32

    def __init__(self, config: Any = None) -> None:
        """Validate the settings."""
        super().__init__(config)
        c = self.config
        if c.net != "alex" or c.version != "0.1":
            raise ConfigError("lpips: only net 'alex', version '0.1' is supported (the ESD/AdvAnchor protocol)")
        if c.backbone_weights not in (ALEXNET_KEY, TOY_KEY, RANDOM_TEST):
            raise ConfigError(f"lpips: backbone_weights must be one of '{ALEXNET_KEY}', '{TOY_KEY}', "
                              f"'{RANDOM_TEST}'")
        if c.resize_mode != "pil_bilinear":
            raise ConfigError("lpips: resize_mode must be 'pil_bilinear'")

    def distances(self, model: Any, a: list[Image], b: list[Image], device: Any) -> torch.Tensor:
        """Per-pair LPIPS of two equally long image lists."""
        import torch

        if len(a) != len(b):
            raise ValueError(f"lpips: {len(a)} vs {len(b)} images; pairs must match")
        out = []
        with torch.no_grad():
            for idx in batches(range(len(a)), self.config.batch_size):
                x = prepare([a[i] for i in idx], self.config.resize).to(device)
                y = prepare([b[i] for i in idx], self.config.resize).to(device)
                out.append(model(x, y).reshape(-1).double().cpu())
        return torch.cat(out)

    def evaluate(self, pipe: Any, task: Task, run: RunContext) -> dict[str, dict[str, float | Score]]:
        """Mean LPIPS per split between ``run.generate`` and ``run.original_images`` of the same items."""
        toy = self.config.backbone_weights == TOY_KEY
        model = ToyLPIPS(run.device) if toy else build_lpips(self.config.backbone_weights, run.device)
        out: dict[str, dict[str, float | Score]] = {}
        for split, items in task.splits.items():
            d = self.distances(model, run.generate(pipe, items), run.original_images(items), run.device)
            out[split] = {"toy_lpips" if toy else "lpips": Score(float(d.mean()), len(d), tuple(d.tolist()))}
        return out
