"""A multirun (``erasebench -m``) as a whole: check every job, launch, then say what became of each.

1. Every job's config is composed and checked (:func:`erasebench.jobs.check_sweep`) before anything is created
   or submitted to Slurm or Ray; one message lists every bad job and why, and the command exits with 2.
2. Each job not yet finished gets ``status.json`` = queued, so a sweep that dies early still shows what it
   had left to do; the launcher runs the jobs.
3. Each job returns its outcome instead of raising (:func:`erasebench.cli._app`), so one failure never stops
   the others; at the end the sweep prints done / skipped / failed with each failure's reason and exits
   with 1 if any failed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from erasebench.plan import job_config

log = logging.getLogger("erasebench")
#: Overrides that only say where things go: left out of a job's label.
_QUIET = ("paths.", "hydra.", "hydra/")


def job_label(overrides: Sequence[str]) -> str:
    """The overrides that tell one job of a sweep from the others, as one line."""
    return " ".join(o for o in overrides if not o.lstrip("+~").startswith(_QUIET)) or "(defaults)"


def composition_message(exc: Exception, sweep: bool = True) -> str:
    """Hydra's composition error as one paragraph; for a method setting the method lacks, how to scope it."""
    text = " ".join(str(exc).replace("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
                                     "").split())
    key = re.match(r"Could not override 'method\.([^']+)'", text)
    if key and sweep:  # the usual cause: a setting that only some of the swept methods have
        text = (f"'method.{key[1]}' is set for every method of the sweep, and not every one has a setting "
                f"'{key[1]}' (Hydra: {text}). Set a setting of one method by its name: "
                f"methods.<method>.{key[1]}=value (e.g. methods.esd.iterations=5).")
    elif key:
        text = f"The method has no setting '{key[1]}' (Hydra: {text})."
    return text


def compose_jobs(sweeper: Any, arguments: list[str]) -> tuple[list[list[list[str]]], list[tuple[str, Any]],
                                                               list[tuple[str, str]]]:
    """Expand the sweep like Hydra's basic sweeper and compose every job's config.

    Returns:
        The batches of job overrides, ``(label, config with hydra)`` per job that composed, and
        ``(label, message)`` per job that did not.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = sweeper.hydra_context.config_loader
    params = [*sweeper._parse_config(), *arguments]
    batches = sweeper.split_arguments(OverridesParser.create(config_loader=loader).parse_overrides(params),
                                      sweeper.max_batch_size)
    composed, errors = [], []
    for overrides in (o for batch in batches for o in batch):
        label = job_label(overrides)
        try:
            composed.append((label, loader.load_sweep_config(sweeper.config, list(overrides))))
        except Exception as exc:  # Hydra's composition errors: a key the method's YAML does not have, ...
            errors.append((label, composition_message(exc)))
    return batches, composed, errors


def check_or_exit(composed: list[tuple[str, Any]], errors: list[tuple[str, str]]) -> None:
    """Check every job; print one message listing each bad one and exit with 2 if any is bad."""
    from erasebench.jobs import SweepCheck, check_sweep

    found = check_sweep([(label, job_config(cfg)) for label, cfg in composed])
    found = SweepCheck([*errors, *found.errors], found.plugin_errors)
    if found.errors:
        print(f"erasebench: error: {found.message(len(composed) + len(errors))}", file=sys.stderr)
        raise SystemExit(2)
    for label, msg in found.plugin_errors:
        print(f"erasebench: warning: {label}: {msg} This job will fail; the others run.", file=sys.stderr)


def _mark_queued(composed: list[tuple[str, Any]]) -> None:
    from erasebench.status import read_status, write_status

    for _, cfg in composed:
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        state = read_status(run_dir).get("status")
        if state not in ("running", "done") and not (run_dir / "metrics.csv").exists():
            write_status(run_dir, "queued")


def _outcome(ret: Any) -> dict[str, Any]:
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, dict):
        return ret._return_value
    error = ret._return_value  # the launcher caught an exception erasebench's job did not
    return {"status": "failed", "run_dir": str(getattr(ret, "working_dir", "") or "?"),
            "error": f"{type(error).__name__}: {error}"}


def summary(outcomes: list[dict[str, Any]], sweep_dir: str) -> str:
    """What became of each job: counts, then every failure with its reason and traceback file."""
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines = [f"erasebench: {len(outcomes)} jobs: {counts['done']} done, {counts['skipped']} skipped (finished "
             f"before), {counts['failed']} failed"]
    for o in (o for o in outcomes if o["status"] == "failed"):
        where = f" (traceback: {o['traceback']})" if o.get("traceback") else ""
        lines.append(f"  failed: {o['run_dir']}: {o['error']}{where}")
    table = results_table([o["run_dir"] for o in outcomes if o["status"] in ("done", "skipped")])
    if table:
        lines += ["", "What this sweep produced (mean over seeds; the report adds intervals, tests and figures):",
                  "", table.rstrip("\n")]
    lines.append(f"Report: erasebench-report {sweep_dir}")
    return "\n".join(lines)


def results_table(run_dirs: Sequence[str]) -> str:
    """A Markdown summary table of the runs in ``run_dirs`` (empty when none has readable results)."""
    from erasebench.errors import ErasebenchError
    from erasebench.report import collect, summary, tables

    rows = collect.read_runs([Path(d) / "metrics.csv" for d in run_dirs if (Path(d) / "metrics.csv").is_file()])
    if rows.empty:
        return ""
    try:
        collect.check_settings(rows)
    except ErasebenchError as exc:  # the report refuses these too; the sweep itself succeeded
        return f"(no table: {exc})\n"
    text, best, tied = tables.cells(summary.summarize(rows))
    return tables.to_markdown(text, best, tied)


def run_sweep(sweeper: Any, arguments: list[str]) -> list[Any]:
    """The sweep of :class:`hydra_plugins.erasebench_sweeper.erasebench_sweeper.ErasebenchSweeper`."""
    batches, composed, errors = compose_jobs(sweeper, arguments)
    check_or_exit(composed, errors)
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")
    _mark_queued(composed)
    returns, outcomes, start = [], [], 0
    for batch in batches:
        results = sweeper.launcher.launch(batch, initial_job_idx=start)
        start += len(batch)
        returns.append(results)
        outcomes += [_outcome(r) for r in results]
    print(summary(outcomes, str(sweep_dir)))
    if any(o["status"] == "failed" for o in outcomes):
        raise SystemExit(1)
    return returns
