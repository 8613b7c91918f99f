"""erasebench: a benchmark harness for concept erasure in text-to-image diffusion models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erasebench")
except PackageNotFoundError:  # running from a clone without `pip install`
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
