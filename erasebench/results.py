"""Run outputs: tidy metric rows with provenance, the erased tensors, atomic writes.

A run directory holds ``metrics.csv`` (one row per split x metric), ``erased/`` (the tensors the method
changed, as safetensors, with ``meta.json``), ``images/`` (links to the erased model's PNGs) and Hydra's
``.hydra/``. Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written file that a relaunch would mistake for a finished one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import erasebench

#: Columns of ``metrics.csv``: the key, the measurement, then provenance.
COLUMNS = [
    "experiment", "model", "task", "concept", "method", "seed", "split", "evaluator", "metric",
    "value", "n", "higher_is_better",
    "config_hash", "erasebench_version", "git_sha", "model_source", "sampler", "image_seeds", "limit",
    "evaluator_settings", "method_settings", "device", "dtype", "torch", "diffusers", "transformers",
    "duration_s", "finished_at",
]  # fmt: skip
KEY = ["experiment", "model", "task", "concept", "method", "seed", "split", "evaluator", "metric"]
# Settings that change a number; two rows that differ in one of these must never be averaged together.
SETTINGS = ["model_source", "sampler", "image_seeds", "limit", "evaluator_settings", "method_settings", "dtype"]


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Hash of every setting that can change a result (paths and the experiment label excluded)."""
    clean = {k: v for k, v in cfg.items() if k not in ("paths", "hydra", "experiment_name")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def git_sha() -> str:
    """The commit of the erasebench checkout, or ``"unknown"`` for an installed copy."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the packages that change generated images."""
    import diffusers
    import torch
    import transformers

    return {"erasebench_version": erasebench.__version__, "git_sha": git_sha(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_metrics(rows: Sequence[Mapping[str, Any]], path: Path) -> pd.DataFrame:
    """Write rows to ``metrics.csv`` atomically, in :data:`COLUMNS` order."""
    df = pd.DataFrame(list(rows)).reindex(columns=COLUMNS)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def finished_hash(run_dir: Path) -> str | None:
    """The config hash of a finished run in ``run_dir``, or ``None`` if it has no complete results."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    hashes = pd.read_csv(path, usecols=["config_hash"], dtype=str)["config_hash"].unique()
    return str(hashes[0]) if len(hashes) == 1 else None


def file_digests(paths: Iterable[str]) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each file; ``"missing"`` for one that no longer exists."""
    out = {}
    for path in paths:
        p = Path(path)
        out[path] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"
    return out


def inputs_unchanged(recorded: Mapping[str, str]) -> bool:
    """Whether every data file in ``recorded`` (path -> digest) still has its recorded digest."""
    return file_digests(recorded) == dict(recorded)


def save_erased(pipe: Any, before: Mapping[str, str], run_dir: Path, meta: Mapping[str, Any]) -> list[str]:
    """Save the tensors whose digest changed since ``before`` as ``erased/tensors.safetensors``.

    Returns:
        The names (``component.tensor``) of the changed tensors.
    """
    from safetensors.torch import save_file

    from erasebench.generate import weight_digests

    after = weight_digests(pipe)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    tensors = {}
    for key in changed:
        component, name = key.split(".", 1)
        tensors[key] = getattr(pipe, component).state_dict()[name].detach().to("cpu").contiguous()
    out = run_dir / "erased"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tensors.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "tensors.safetensors")
    atomic_write_text(out / "meta.json", json.dumps({**meta, "changed": changed}, indent=1, default=str))
    return changed


def load_erased(pipe: Any, run_dir: Path, method_hash: str) -> bool:
    """Load a previous run's erased tensors into ``pipe`` if they were made with ``method_hash``.

    Returns:
        Whether the tensors were loaded (so erasure need not run again).
    """
    from safetensors.torch import load_file

    meta_path, tensor_path = run_dir / "erased" / "meta.json", run_dir / "erased" / "tensors.safetensors"
    if not (meta_path.exists() and tensor_path.exists()):
        return False
    meta = json.loads(meta_path.read_text())
    # Data files the method read (e.g. S-GRACE's concept lists) count like its settings.
    if meta.get("method_hash") != method_hash or not inputs_unchanged(meta.get("data_files", {})):
        return False
    by_component: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(tensor_path)).items():
        component, name = key.split(".", 1)
        by_component.setdefault(component, {})[name] = value
    for component, state in by_component.items():
        module = getattr(pipe, component)
        ref = next(module.parameters())
        module.load_state_dict({k: v.to(ref.device) for k, v in state.items()}, strict=False)
    return True
