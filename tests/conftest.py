"""Shared fixtures: a tiny pipeline built from config, Hydra composition, and a CLI runner."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from erasebench.models import build_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _tiny_master() -> Any:
    pipe = build_tiny()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe(_tiny_master: Any) -> Any:
    """A fresh copy of the tiny random SD pipeline (methods may edit it in place)."""
    return copy.deepcopy(_tiny_master)


def cached_run_context(pipe: Any, tmp_path: Path, seed: int = 0, run_dir: Path | None = None) -> Any:
    """A CPU ``RunContext`` for a method or evaluator on ``pipe``: images from a 2-step 32x32 cache under
    ``tmp_path / "cache"``, the original model's images from the same cache, at most 2 prompts per split."""
    import torch

    from erasebench.api import RunContext
    from erasebench.generate import ImageCache, Sampler

    cache = ImageCache(tmp_path / "cache", Sampler(steps=2, height=32, width=32), progress=False)
    return RunContext(seed=seed, device=torch.device("cpu"), dtype=torch.float32, run_dir=run_dir or tmp_path,
                      generate=cache, original_images=lambda items: cache(pipe, items), limit=2)


@pytest.fixture
def fixed(tiny_pipe: Any) -> dict[str, Any]:
    """Fixed UNet inputs for loss tests: latents, timesteps, and random prompt embeddings."""
    import torch

    g = torch.Generator().manual_seed(0)
    dim = tiny_pipe.unet.config.cross_attention_dim
    return {"z": torch.randn(2, 4, 16, 16, generator=g), "t": torch.tensor([500, 120]),
            "emb_0": torch.randn(2, 77, dim, generator=g), "emb_c": torch.randn(2, 77, dim, generator=g),
            "emb_a": torch.randn(2, 77, dim, generator=g), "noise": torch.randn(2, 4, 16, 16, generator=g)}


def perturb(params: dict[str, Any], scale: float = 0.05) -> None:
    """Move trained tensors away from their original values, reproducibly (seeded noise)."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.values():
            p.add_(scale * torch.randn(p.shape, generator=g))


def trained_and_original(unet: Any, group: str) -> tuple[Any, dict[str, Any], Any]:
    """``(original, params, frozen)``: a real deep copy of ``unet`` (to check the shadow swap against), the
    trained tensors of ``group``, their :class:`Shadow`; the trained tensors are then perturbed so that the
    trained model differs from the original."""
    import copy

    from erasebench.erasure import Shadow, select_parameters

    original = copy.deepcopy(unet)
    params = select_parameters(unet, group)
    frozen = Shadow(params)
    perturb(params)
    return original, params, frozen


def run_dir_of(method_dir: Path, seed: int = 0) -> Path:
    """The one run directory of ``<...>/<method>/<settings>/seed=<seed>`` under ``method_dir``."""
    found = sorted(Path(method_dir).glob(f"*/seed={seed}"))
    assert len(found) == 1, f"expected one run under {method_dir}, found {found}"
    return found[0]


def compose_cfg(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed erasebench config as a plain dict (without the ``hydra`` node)."""
    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def paper_method(name: str, smoke: bool = True, **settings: Any) -> Any:
    """Method ``name`` built from its ``conf/method`` node (paper settings, no toy preset), with its
    ``smoke_settings`` on top unless ``smoke`` is false, then ``settings``."""
    from erasebench.configs import build_config
    from erasebench.registry import METHODS

    cls = METHODS.get(name)
    node = {k: v for k, v in compose_cfg(["model=tiny", f"method={name}"])["method"].items() if k != "name"}
    return cls(build_config(cls, {**node, **(cls.smoke_settings if smoke else {}), **settings}, "method"))


def task_of(task: str = "smoke", concept: str = "cat", limit: int | None = 2) -> Any:
    """The :class:`Task` of ``conf/task/<task>.yaml`` for ``concept``, ``limit`` prompts per split."""
    from erasebench.configs import build_task

    return build_task(compose_cfg([f"task={task}"])["task"], concept, limit=limit)


def run_cli(args: Sequence[str], tmp: Path, env: dict[str, str] | None = None,
            module: str = "erasebench.cli", timeout: float = 600, tiny: bool = True) -> subprocess.CompletedProcess:
    """Run ``erasebench`` (or another module) in a subprocess with results and cache under ``tmp``.

    With ``tiny`` (the default), ``model=tiny task=smoke method=none`` replace the toy-world defaults
    unless ``args`` set them (or an experiment does).
    """
    full_env = {**os.environ, **(env or {})}
    extra = [f"paths.results_dir={tmp / 'runs'}", f"paths.cache_dir={tmp / 'cache'}"] if module.endswith("cli") else []
    if module.endswith("cli") and tiny and not any(a.startswith("experiment=") for a in args):
        given = {a.split("=")[0] for a in args}
        extra += [f"{k}={v}" for k, v in (("model", "tiny"), ("task", "smoke"), ("method", "none")) if k not in given]
    return subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=tmp, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def toy_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directories and image cache shared by the toy-world tests.

    A method trained on a toy task (same settings, seed and thread count) is saved once in
    ``runs/<task>/<method>``; a later test that evaluates it differently reuses the erased tensors (the runner
    matches them by a hash that leaves the evaluators out), so ESD trains once for the bar and the attack tests.
    """
    return tmp_path_factory.mktemp("toy_shared")
