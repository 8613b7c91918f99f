"""The toy concept world: a tiny, CPU-trainable Stable-Diffusion-architecture model.

Images are coloured shapes (object concepts) rendered in textures (style
concepts); see :mod:`erasebench.toy.data`. The trained assets live in
:data:`ASSETS_DIR` and are rebuilt with ``python -m erasebench.toy.train``.

This module imports nothing heavy so that ``import erasebench.toy`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
PIPELINE_SUBDIR = "pipeline"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"

_REBUILD_HINT = "run `python -m erasebench.toy.train` to rebuild the toy assets"


class ToyAssetsMissingError(FileNotFoundError):
    """Raised when trained toy weights are not present on disk."""


def _require(path: Path) -> Path:
    if not path.exists():
        raise ToyAssetsMissingError(f"toy asset {path} is missing; {_REBUILD_HINT}")
    return path


def pipeline_path(assets_dir: str | Path | None = None) -> Path:
    """Directory of the saved toy ``StableDiffusionPipeline``.

    Args:
        assets_dir: Override of :data:`ASSETS_DIR`.

    Returns:
        Path usable with ``StableDiffusionPipeline.from_pretrained``.

    Raises:
        ToyAssetsMissingError: If the pipeline has not been trained/saved.
    """
    root = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    return _require(root / PIPELINE_SUBDIR / "model_index.json").parent


def classifier_paths(assets_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Paths ``(weights, config)`` of the toy classifier; raises if missing."""
    root = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    return _require(root / CLASSIFIER_WEIGHTS), _require(root / CLASSIFIER_CONFIG)


def load_pipeline(assets_dir: str | Path | None = None, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """Load the toy ``StableDiffusionPipeline`` (progress bar disabled)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline_path(assets_dir)))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


__all__ = ["ASSETS_DIR", "ToyAssetsMissingError", "pipeline_path", "classifier_paths", "load_pipeline"]
