"""The first stage of a run, and pure: a composed config -> the run's identity and its directory.

A run's identity is its resolved config: model, task, concept, method with every setting, seed, limit,
threads, device and the task's evaluator settings. Paths and the experiment label are not part of it (they
say where results go, not what they are). Two jobs of a sweep that differ in any setting therefore get two
run directories, and a rerun of the same job finds its own directory again, whichever launcher runs it:

    <results_dir>/<experiment>/<model>/<task>/<concept>/<method>/<settings>/seed=<seed>/

``<settings>`` is a short hash of the identity without concept and seed (so the seeds and concepts of one
setting sit side by side), prefixed by the settings given on the command line, for reading:
``uce/lamb=0.1-3f9c02d1e4a7/seed=0``. The hash alone decides; the prefix is a label.

Settings of one method in a multi-method sweep are scoped by its name, ``methods.<name>.<key>=value``
(``erasebench -m method=none,esd methods.esd.iterations=5``): :func:`effective_config` merges them over
``method`` when that method runs and drops them otherwise, so they change only that method's identity.

Nothing here imports torch; the checks that need the plugins are in :mod:`erasebench.jobs`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from erasebench.errors import ConfigError

log = logging.getLogger("erasebench")
#: Bumped when the meaning of a setting changes (2: ``limit`` spreads over the split's concepts, round-robin),
#: so that runs made under the old meaning are never taken for finished ones.
RUN_FORMAT = 2
#: Top-level keys that say where results go or which sweep made them, not what they are.
NOT_IDENTITY = ("paths", "hydra", "experiment_name", "methods")
#: Command-line keys that are already parts of the run directory, or that change no result.
_PATH_KEYS = {"model", "task", "method", "concept", "seed", "experiment", "experiment_name"}
_MAX_LABEL = 80


def effective_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config a job runs with: ``methods.<its method>`` merged over ``method``, ``methods`` dropped.

    Args:
        cfg: A composed config as plain containers (``hydra`` may be present; it is kept as is).
    """
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "methods"}
    scoped = (cfg.get("methods") or {}).get(str(out["method"]["name"])) or {}
    if scoped:
        merged = OmegaConf.merge(OmegaConf.create(out["method"]), OmegaConf.create(dict(scoped)))
        out["method"] = OmegaConf.to_container(merged, resolve=True)
    return out


def identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that can change a result of the job (see the module docstring)."""
    eff = effective_config(cfg)
    return {**{k: v for k, v in eff.items() if k not in NOT_IDENTITY}, "run_format": RUN_FORMAT}


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def config_hash(cfg: Mapping[str, Any]) -> str:
    """The run's identity as 16 hex digits; a finished run with this hash in its rows is this run."""
    return _digest(identity(cfg))


def settings_hash(cfg: Mapping[str, Any]) -> str:
    """The identity without concept and seed, as 12 hex digits: the ``<settings>`` part of the directory."""
    return _digest({k: v for k, v in identity(cfg).items() if k not in ("concept", "seed")}, 12)


def _override_label(override: str, method: str) -> str | None:
    """``method.lamb=0.1`` -> ``lamb=0.1``; None for overrides that are path parts or change nothing."""
    key, sep, value = override.lstrip("+~").partition("=")
    if not sep or "/" in key or key in _PATH_KEYS or key.split(".")[0] in ("paths", "hydra"):
        return None
    if key.startswith("methods."):
        scope, _, rest = key.removeprefix("methods.").partition(".")
        if scope != method or not rest:
            return None  # another method's setting: not a part of this job
        key = rest
    else:
        key = key.removeprefix("method.")
    return f"{key}={value}"


def settings_label(overrides: Sequence[str], method: str) -> str:
    """A readable label of the command-line settings of a job, safe as a directory name (may be empty)."""
    labels = sorted(filter(None, (_override_label(o, method) for o in overrides)))
    text = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(labels)).strip("_.")
    return text[:_MAX_LABEL].rstrip("_.,")


def run_subdir(cfg: Mapping[str, Any], overrides: Sequence[str] = ()) -> str:
    """``<model>/<task>/<concept>/<method>/<settings>/seed=<seed>``, relative to the experiment directory.

    Args:
        cfg: The job's composed config (plain containers).
        overrides: The job's command-line overrides (for the readable part of ``<settings>``).
    """
    eff = effective_config(cfg)
    method = str(eff["method"]["name"])
    label = settings_label(overrides, method)
    settings = f"{label}-{settings_hash(cfg)}" if label else settings_hash(cfg)
    parts = [eff["model"]["name"], eff["task"]["name"], eff["concept"], method, settings, f"seed={eff['seed']}"]
    return "/".join(re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(p)) for p in parts)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_scalars(cfg: Mapping[str, Any]) -> None:
    """Check the run-level settings that need no plugin: seed, limit, threads, device, dtype, ``methods``.

    Raises:
        ConfigError: One paragraph naming the key, the value and what is valid.
    """
    seed, limit, threads = cfg.get("seed"), cfg.get("limit"), cfg.get("threads")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ConfigError(f"seed={seed!r}: the seed must be a non-negative integer (e.g. seed=0, or seed=0,1,2 "
                          "with -m).")
    if limit is not None and not _positive_int(limit):
        raise ConfigError(f"limit={limit!r}: limit must be a positive integer (the most images per split, spread "
                          "over the split's concepts) or null (every image).")
    if threads is not None and not _positive_int(threads):
        raise ConfigError(f"threads={threads!r}: threads must be a positive integer (torch's CPU threads) or null "
                          "(torch's default).")
    device = str(cfg.get("device"))
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"device={device!r}: valid devices are auto (cuda if present, else cpu), cpu, cuda, "
                          "cuda:<index> and mps.")
    dtype = str((cfg.get("model") or {}).get("dtype", "auto"))
    if dtype not in _DTYPES:
        raise ConfigError(f"model.dtype={dtype!r}: valid dtypes are {', '.join(_DTYPES)}.")
    scoped = cfg.get("methods") or {}
    if not isinstance(scoped, Mapping) or not all(isinstance(v, Mapping) for v in scoped.values()):
        raise ConfigError("'methods' holds settings scoped by method name, as methods.<method>.<setting>=value "
                          f"(e.g. methods.esd.iterations=5); got {scoped!r}.")


def run_dir_resolver(*, _root_: Any) -> str:
    """OmegaConf resolver ``${erasebench_run:}``: the run directory of the job whose config is ``_root_``.

    Hydra resolves its output directory in the process that runs the job (a Slurm node, a Ray worker), so
    every launcher computes the same directory from the same config.
    """
    job = job_config(_root_)
    overrides = list(OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or [])
    return run_subdir(job, overrides)


def job_config(root: Any) -> dict[str, Any]:
    """A composed Hydra config as plain containers, without its ``hydra`` node (what a job runs with)."""
    # Key by key: resolving the whole root would resolve hydra.run.dir, i.e. the resolver above again.
    out: dict[str, Any] = {}
    for key in root:
        if key == "hydra":
            continue
        value = root[key]
        out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def register_resolvers() -> None:
    """Register ``${erasebench_run:}`` (idempotent); the CLI does this before Hydra resolves a run directory."""
    if not OmegaConf.has_resolver("erasebench_run"):
        OmegaConf.register_new_resolver("erasebench_run", run_dir_resolver, use_cache=False)


def is_done(run_dir: Path, chash: str) -> bool:
    """Whether ``run_dir`` holds this run's finished results.

    Finished means a valid ``metrics.csv`` whose rows carry ``chash`` (a bad one is moved aside by
    :func:`erasebench.results.finished_hash`), and data files with the digests the run recorded. A run from
    before data files were recorded has no ``data_files.json`` and counts as up to date.
    """
    from erasebench.results import finished_hash, inputs_unchanged

    if finished_hash(run_dir) != chash:
        return False
    inputs = run_dir / "data_files.json"
    try:
        recorded = json.loads(inputs.read_text(encoding="utf-8")) if inputs.exists() else {}
    except ValueError:
        recorded = None  # unreadable: redo the run rather than trust it
    if isinstance(recorded, dict) and inputs_unchanged(recorded):
        return True
    log.info("redo: a data file %s read has changed since it finished", run_dir)
    return False
