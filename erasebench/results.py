"""Run outputs: tidy metric rows with provenance, checked when read, and atomic writes.

A run directory holds ``metrics.csv`` (one row per split x metric, with its metadata and 95% interval),
``per_image.csv`` (each image's value of every per-image metric), ``erased/`` (the tensors the method
changed: :mod:`erasebench.erased`), ``images/`` (links to the erased model's PNGs) and Hydra's ``.hydra/``.
Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file that
a relaunch would mistake for a finished one; a damaged file found later is moved aside (:func:`quarantine`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import erasebench
from erasebench.errors import CorruptFileError, MissingFileError

log = logging.getLogger("erasebench")

#: Columns of ``metrics.csv``: the key, the measurement (with its metadata and interval), then provenance.
COLUMNS = [
    "experiment", "model", "task", "concept", "method", "seed", "split", "evaluator", "metric",
    "value", "n", "higher_is_better", "metric_display", "unit", "aggregate", "ci_low", "ci_high", "ci_method",
    "config_hash", "erasebench_version", "git_sha", "model_source", "sampler", "image_seeds", "limit",
    "evaluator_settings", "method_settings", "device", "dtype", "torch", "diffusers", "transformers",
    "duration_s", "finished_at",
]  # fmt: skip
#: Columns a file written before metric metadata and intervals existed lacks; read as empty.
OPTIONAL = ["metric_display", "unit", "aggregate", "ci_low", "ci_high", "ci_method"]
REQUIRED = [c for c in COLUMNS if c not in OPTIONAL]
KEY = ["experiment", "model", "task", "concept", "method", "seed", "split", "evaluator", "metric"]
# Settings that change a number; two rows that differ in one of these must never be averaged together.
# The device too: CPU results depend on the thread count, and GPUs differ from CPUs in the last digits.
SETTINGS = ["model_source", "sampler", "image_seeds", "limit", "evaluator_settings", "method_settings", "dtype",
            "device"]


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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name next to ``path`` (``.<name>.<pid>.tmp``: parallel jobs never share one) to write
    to; it is renamed onto ``path`` when the block succeeds, and removed when the block or the rename raises
    (the error propagates), so a full disk leaves no ``*.tmp`` behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: the half-written file is useless to everyone
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (the temporary file is removed if
    either fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def quarantine(path: Path, reason: str) -> Path:
    """Move a damaged file aside, in its directory, to ``<name>.corrupt`` (``.corrupt.1``, ... if taken): a name
    no ``*.png``, ``metrics.csv`` or ``tensors.safetensors`` glob matches, so the file reads as absent and the
    work that made it is redone, while the bad copy stays for inspection. The caller owns the directory
    (a run's) or holds its lock (the image cache), so no one else picks the same name meanwhile.

    Args:
        path: The damaged file.
        reason: What is wrong with it; logged, with both paths, as one warning line on ``erasebench``.

    Returns:
        The file's new path.
    """
    names = (path.with_name(f"{path.name}.corrupt{f'.{i}' if i else ''}") for i in itertools.count())
    new = next(n for n in names if not n.exists())
    os.replace(path, new)
    log.warning("quarantined damaged %s as %s: %s", path, new, " ".join(reason.split()))
    return new


def write_metrics(rows: Sequence[Mapping[str, Any]], path: Path) -> pd.DataFrame:
    """Write rows to ``metrics.csv`` atomically, in :data:`COLUMNS` order."""
    df = pd.DataFrame(list(rows)).reindex(columns=COLUMNS)
    atomic_write_text(path, df.to_csv(index=False))
    return df


#: Columns of ``per_image.csv``: each image's value of every metric that has one, in the split's item order.
PER_IMAGE_COLUMNS = ["split", "evaluator", "metric", "index", "value", "prompt", "image_seed"]


def write_per_image(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write the per-image values of a run atomically (the report bootstraps and pairs them)."""
    atomic_write_text(path, pd.DataFrame(list(rows)).reindex(columns=PER_IMAGE_COLUMNS).to_csv(index=False))


def finished_hash(run_dir: Path) -> str | None:
    """The config hash of a finished run in ``run_dir``, or ``None`` if it has no complete results.

    A ``metrics.csv`` that fails :func:`read_metrics` is quarantined (see :func:`quarantine`) and the run
    counts as unfinished, so a rerun redoes it instead of failing on the file.
    """
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    frame, problem = _parse_metrics(path)
    if frame is None:
        quarantine(path, problem)
        return None
    hashes = frame["config_hash"].unique()
    return str(hashes[0]) if len(hashes) == 1 else None


def read_metrics(path: Path) -> pd.DataFrame:
    """Read a run's ``metrics.csv``, checking that it is complete and in the schema :func:`write_metrics` writes.

    The schema: UTF-8 CSV text that ends with a newline (``to_csv`` always writes one, so a file without it
    was cut mid-row); a header that holds every column of :data:`REQUIRED` (extra columns are allowed, the
    order is not checked; the :data:`OPTIONAL` ones of older files are added, empty); at least one row; every row has exactly as many fields as the header; every row
    has a non-empty ``config_hash``; every ``value`` is empty or parses as a float (``nan`` and ``inf``
    included: an evaluator may legitimately produce them). Other columns may be empty.

    Args:
        path: The ``metrics.csv`` file.

    Returns:
        Its rows, read as the report reads them (``keep_default_na=False, na_values=[""]``), with
        ``config_hash`` as text and ``value`` as float.

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptFileError: The file breaks the schema; the message names it and the first problem found.
    """
    if not path.is_file():
        raise MissingFileError(f"No metrics file '{path}'.")
    frame, problem = _parse_metrics(path)
    if frame is None:
        raise CorruptFileError(f"The metrics file '{path}' is damaged: {problem}. A killed run, a full disk or "
                               f"an edit leaves such a file; delete it, or rerun that run, which redoes it.")
    return frame


def _parse_metrics(path: Path) -> tuple[pd.DataFrame | None, str]:
    # (frame, "") or (None, what is wrong); finished_hash logs the bare problem, read_metrics wraps it.
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    problem = _metrics_problem(text)
    if problem:
        return None, problem
    try:
        frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], dtype={"config_hash": str})
        frame = frame.reindex(columns=[*COLUMNS, *(c for c in frame.columns if c not in COLUMNS)])
        for col in ("value", "ci_low", "ci_high"):
            frame[col] = frame[col].astype(float)
    except ValueError as e:  # pandas' parser errors; the checks above should leave none
        return None, f"pandas cannot read it ({e})"
    return frame, ""


def _metrics_problem(text: str) -> str | None:
    if not text.strip():
        return "it is empty"
    if not text.endswith("\n"):
        return "it ends mid-row (no final newline)"
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a long settings field is no damage
    try:
        records = [r for r in csv.reader(io.StringIO(text), strict=True) if r]  # blank lines, as pandas skips them
    except csv.Error as e:
        return f"it is not valid CSV ({e})"
    header, rows = records[0], records[1:]
    if missing := [c for c in REQUIRED if c not in header]:
        return f"its header lacks the column(s) {', '.join(missing)}"
    if not rows:
        return "it has a header but no rows"
    at_hash, at_value = header.index("config_hash"), header.index("value")
    for i, row in enumerate(rows, start=1):
        if len(row) != len(header):
            return f"row {i} has {len(row)} fields, the header {len(header)}"
        if not row[at_hash]:
            return f"row {i} has no config_hash"
        if row[at_value] and not _is_float(row[at_value]):
            return f"row {i} has the value {row[at_value]!r}, not a number"
    return None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
