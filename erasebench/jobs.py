"""Check a job, or a whole sweep, before anything runs: names, settings, types, concept, limit, data files.

:func:`prepare` turns one composed config into a :class:`Job` (the method, task, evaluators and sampler, all
validated) without loading a model; the runner calls it first. :func:`check_sweep` prepares every job of a
sweep and collects what is wrong with each, so one message can list every bad job before the first starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from erasebench.api import Evaluator, Method, Task
from erasebench.configs import build_config, build_evaluators, build_task
from erasebench.datafiles import DataReads
from erasebench.errors import ConfigError, ErasebenchError, PluginLoadError
from erasebench.generate import Sampler
from erasebench.plan import check_scalars, config_hash, effective_config
from erasebench.registry import METHODS


@dataclass
class Job:
    """One validated job: what the runner needs, before the model loads.

    Attributes:
        cfg: The effective config (``methods.<name>`` merged into ``method``).
        config_hash: The run's identity (:func:`erasebench.plan.config_hash`).
        method: The method, with its validated config.
        task: The task, its splits expanded (and capped by ``limit``).
        evaluators: ``(label, evaluator, splits or None)`` per evaluator of the task.
        sampler: The sampler settings (``model.sampler`` without ``batch_size``), checked.
        batch_size: Images per pipeline call.
    """

    cfg: dict[str, Any]
    config_hash: str
    method: Method
    task: Task
    evaluators: list[tuple[str, Evaluator, list[str] | None]]
    sampler: Sampler
    batch_size: int


def plugin_kwargs(node: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin node's settings: everything but ``name``."""
    return {k: v for k, v in node.items() if k != "name"}


def _check_scoped(scoped: Mapping[str, Any]) -> None:
    # Settings of methods that are not this job's are still checked: a typo must not wait for its method's job.
    for name, settings in scoped.items():
        try:
            cls = METHODS.get(str(name))
        except ErasebenchError as exc:
            raise type(exc)(f"In methods.{name}: {exc}") from None
        build_config(cls, dict(settings), "method")


def _sampler(node: Mapping[str, Any]) -> tuple[Sampler, int]:
    settings = dict(node)
    batch = settings.pop("batch_size", 8)
    valid = {f.name for f in fields(Sampler)}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ConfigError(f"Unknown sampler setting model.sampler.{unknown[0]}; valid: batch_size, "
                          f"{', '.join(sorted(valid))}.")
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch > 0):
        raise ConfigError(f"model.sampler.batch_size={batch!r}: it must be a positive integer.")
    try:
        sampler = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Sampler), settings))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "?"
        raise ConfigError(f"Bad value for model.sampler.{key}: {exc.msg.splitlines()[0]}") from None
    return sampler, batch  # type: ignore[return-value]


def prepare(cfg: Mapping[str, Any], reads: DataReads | None = None, tasks: dict[str, Task] | None = None) -> Job:
    """Validate a composed config and build its job (no model is loaded).

    Args:
        cfg: The composed config as plain containers (``hydra`` left out).
        reads: Where to record the data files the task reads.
        tasks: A memo of built tasks, for checking many jobs that share one (prompt files are read once).

    Raises:
        ErasebenchError: A bad name, setting, value or data file; one paragraph saying which and what is valid.
    """
    check_scalars(cfg)
    _check_scoped(cfg.get("methods") or {})
    eff = effective_config(cfg)
    method_cls = METHODS.get(str(eff["method"]["name"]))
    method = method_cls(build_config(method_cls, plugin_kwargs(eff["method"]), "method"))
    key = json.dumps([eff["task"], eff["concept"], eff.get("limit")], sort_keys=True, default=str)
    if tasks is not None and key in tasks:
        task = tasks[key]
    else:
        task = build_task(eff["task"], str(eff["concept"]), eff.get("limit"), reads=reads)
        if tasks is not None:
            tasks[key] = task
    evaluators = build_evaluators(task)
    sampler, batch_size = _sampler(eff["model"]["sampler"])
    return Job(eff, config_hash(cfg), method, task, evaluators, sampler, batch_size)


@dataclass
class SweepCheck:
    """What :func:`check_sweep` found.

    Attributes:
        errors: ``(job label, message)`` for every job that cannot run.
        plugin_errors: ``(job label, message)`` for jobs whose plugin fails to import: they run, fail alone
            and say so in their ``status.json``, so one broken plugin never stops the others.
    """

    errors: list[tuple[str, str]]
    plugin_errors: list[tuple[str, str]]

    def message(self, total: int) -> str:
        """One paragraph per bad job, then what to do."""
        lines = [f"{len(self.errors)} of {total} jobs of this sweep cannot run; nothing was started:"]
        lines += [f"  - {label}: {msg}" for label, msg in self.errors]
        lines.append("Fix these settings and run the sweep again.")
        return "\n".join(lines)


def check_sweep(jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> SweepCheck:
    """Prepare every job of a sweep and collect the problems of each.

    Args:
        jobs: ``(label, composed config)`` per job; the label says which job it is (its overrides).
    """
    found = SweepCheck([], [])
    tasks: dict[str, Task] = {}
    for label, cfg in jobs:
        try:
            prepare(cfg, tasks=tasks)
        except PluginLoadError as exc:
            found.plugin_errors.append((label, str(exc)))
        except ErasebenchError as exc:
            found.errors.append((label, str(exc)))
    return found
