"""Helpers shared by the built-in evaluators (a private module: the registry skips ``_``-prefixed files)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from erasebench.api import RunContext

#: The value of a weights setting that builds a backbone with seeded random weights. Only for tests and smoke
#: runs: the numbers mean nothing, and the name says so in every result row.
RANDOM_TEST = "random_init_test"

T = TypeVar("T")


def batches(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``seq`` of at most ``size`` elements."""
    for i in range(0, len(seq), max(1, size)):
        yield seq[i : i + size]


def to_uint8(images: Sequence[Image]) -> torch.Tensor:
    """PIL images of one size -> ``(B, 3, H, W)`` uint8 RGB tensor."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def same_size_batches(images: Sequence[Image], size: int) -> Iterator[Sequence[Image]]:
    """Batches of at most ``size`` consecutive images that share one resolution (folders of real photos vary)."""
    batch: list[Image] = []
    for im in images:
        if batch and (len(batch) >= size or im.size != batch[0].size):
            yield batch
            batch = []
        batch.append(im)
    if batch:
        yield batch


def seeded(build: Callable[[], T], seed: int = 0) -> T:
    """Build a module with random weights that are the same on every call (global RNG left untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely: safetensors, or ``torch.load(weights_only=True)`` (tensors only, no code)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def file_digest(path: Path, n: int = 12) -> str:
    """Leading hex digits of a file's SHA-256 (recorded as the weights id of files we do not pin by URL)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def evaluator_cache_dir(run: RunContext, kind: str) -> Path:
    """A folder for an evaluator's derived artefacts (trained classifiers) next to the shared image cache.

    Artefacts go to ``<paths.cache_dir>/<kind>`` (``run.cache_dir``), shared by every run that uses the same
    cache; without one, next to a custom image cache's root, else in the run directory.
    """
    if run.cache_dir is not None:
        return Path(run.cache_dir) / kind
    root = getattr(run.generate, "root", None)
    if root is None:
        return Path(run.run_dir) / kind
    root = Path(root)
    return (root.parent if root.name == "images" else root) / kind
