"""One run, in stages: plan -> erase or reuse -> evaluate -> write.

1. **Plan** (:mod:`erasebench.plan`, :mod:`erasebench.jobs`): the config is checked and becomes a job and a
   run identity before the model loads, so a typo fails in a second, not after an hour of training.
2. **Erase or reuse**: under the run directory's lock, a run whose ``metrics.csv`` carries the same identity is
   skipped; otherwise the method erases, or the erased tensors a killed run saved are loaded back.
3. **Evaluate**: every evaluator of the task on the erased pipeline, one tidy row per split and metric.
4. **Write**: ``data_files.json``, then ``metrics.csv`` (which marks the run finished), then ``status.json``.

A run that raises records ``status.json`` (failed, the error) and ``traceback.txt`` before the error goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from erasebench import stats
from erasebench.api import PromptItem, RunContext, Score
from erasebench.datafiles import DataReads
from erasebench.erased import load_erased, save_erased
from erasebench.errors import ConfigError
from erasebench.generate import ImageCache, fingerprint, weight_digests
from erasebench.jobs import Job, prepare
from erasebench.locks import exclusive
from erasebench.models import load_pipeline, resolve_device, resolve_dtype
from erasebench.plan import is_done
from erasebench.results import atomic_write_text, file_digests, read_metrics, versions, write_metrics, write_per_image
from erasebench.results import config_hash as settings_digest
from erasebench.status import read_status, write_failure, write_status

log = logging.getLogger("erasebench")


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``status`` is ``done`` (ran now) or ``skipped`` (finished before)."""

    status: str
    run_dir: Path
    metrics: Path


def _link_images(paths: Sequence[Path], out: Path) -> None:
    # Hard links give each run a browsable images/ folder without copying the cache. Link to a private name,
    # then rename over the target: the rename is atomic, so two processes never see a missing file.
    out.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(paths):
        dst, tmp = out / f"{i:05d}.png", out / f".{i:05d}.png.{os.getpid()}.tmp"
        try:
            os.link(src, tmp)
        except OSError:
            tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)
        tmp.unlink(missing_ok=True)  # rename() does nothing when both names are links to one file already


def run(cfg: Mapping[str, Any], run_dir: Path) -> Path:
    """Run one job (see :func:`run_job`) and return the path of its ``metrics.csv``."""
    return run_job(cfg, run_dir).metrics


def run_job(cfg: Mapping[str, Any], run_dir: Path) -> Outcome:
    """Run one (model, method with its settings, task, concept, seed) job in ``run_dir``.

    Args:
        cfg: The composed config (plain containers, without ``hydra``).
        run_dir: The run directory.

    Raises:
        ErasebenchError: Bad input, before the model loads (only ``status.json`` is written, saying so).
    """
    reads, run_dir = DataReads(), Path(run_dir)
    try:
        job = prepare(cfg, reads)
    except Exception as exc:  # in a sweep this is a plugin that fails to import (the rest was checked before)
        write_failure(run_dir, exc)
        raise
    metrics_path = run_dir / "metrics.csv"

    def waiting() -> str:
        holder = read_status(run_dir)
        return f"waiting: {run_dir} is being run by another process (pid {holder.get('pid')} on {holder.get('host')})"

    with exclusive(run_dir / ".lock", on_wait=waiting):
        if is_done(run_dir, job.config_hash):
            log.info("skip: %s is done (config %s)", run_dir, job.config_hash)
            return Outcome("skipped", run_dir, metrics_path)
        write_status(run_dir, "running", config_hash=job.config_hash)
        (run_dir / "traceback.txt").unlink(missing_ok=True)  # an earlier attempt's, which no longer applies
        try:
            _execute(job, run_dir, reads)
        except BaseException as exc:
            path = write_failure(run_dir, exc, job.config_hash)
            log.error("failed: %s (%s: %s; traceback in %s)", run_dir, type(exc).__name__, exc, path)
            raise
        write_status(run_dir, "done", config_hash=job.config_hash)
    return Outcome("done", run_dir, metrics_path)


def _execute(job: Job, run_dir: Path, reads: DataReads) -> None:
    started = time.time()
    cfg = job.cfg
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(str(cfg["device"]))
    dtype = resolve_dtype(str(cfg["model"].get("dtype", "auto")), device)
    cache = ImageCache(Path(cfg["paths"]["cache_dir"]) / "images", job.sampler, job.batch_size)
    pipe = load_pipeline(cfg["model"], device, dtype)
    original_fp, before = fingerprint(pipe), weight_digests(pipe)
    ctx = RunContext(seed=int(cfg["seed"]), device=device, dtype=dtype, run_dir=run_dir, generate=cache,
                     original_images=_original_images(cfg["model"], cache, original_fp, device, dtype),
                     limit=cfg.get("limit"), cache_dir=cache.root.parent, reads=reads)
    if any(e.needs_original for _, e, _ in job.evaluators):
        for items in job.task.splits.values():
            cache.paths(pipe, items)
    pipe, method_reads = _erase_or_reuse(job, pipe, ctx, original_fp, before)
    rows, per_image = _evaluate(job, pipe, ctx)
    for split, items in job.task.splits.items():
        _link_images(cache.paths(pipe, items), run_dir / "images" / split)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        row.update(duration_s=round(time.time() - started, 2), finished_at=finished)
    # Before metrics.csv, which marks the run finished. The method's files were hashed after erasure.
    task_reads = file_digests(p for p in reads.paths() if p not in method_reads)
    atomic_write_text(run_dir / "data_files.json", json.dumps({**method_reads, **task_reads}, indent=1))
    write_per_image(per_image, run_dir / "per_image.csv")
    write_metrics(rows, run_dir / "metrics.csv")
    log.info("wrote %d rows to %s (%d images generated)", len(rows), run_dir / "metrics.csv", cache.generated)


def _original_images(model: Mapping[str, Any], cache: ImageCache, original_fp: str, device: torch.device,
                     dtype: torch.dtype) -> Any:
    """``original_images(items)`` for the run context: from the cache, else from a reloaded original model."""
    original_pipe: list[Any] = []

    def original_images(items: Sequence[PromptItem]) -> list[Any]:
        # Usually cached (generated before erasure, checked when read); a second copy of the model loads if not.
        cached = cache.cached(original_fp, items)
        if cached is not None:
            return cached
        if not original_pipe:
            original_pipe.append(load_pipeline(model, device, dtype))
        return cache(original_pipe[0], items)

    return original_images


def _method_hash(job: Job, original_fp: str) -> tuple[dict[str, Any], str]:
    # Everything that changes the erased weights; saved tensors are reused only when all of it matches.
    task_cfg = {k: v for k, v in job.cfg["task"].items() if k != "evaluators"}  # evaluators never change weights
    meta = {"method": job.method.name, "settings": job.method.settings(), "task": job.task.name,
            "concept": job.task.concept, "task_config": settings_digest({"task": task_cfg}),
            "seed": int(job.cfg["seed"]), "model_fingerprint": original_fp}
    return meta, hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _erase_or_reuse(job: Job, pipe: Any, ctx: RunContext, original_fp: str,
                    before: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """Load the erased tensors a previous attempt saved, or erase now and save them.

    Returns:
        The erased pipeline and the digests of the data files the method read.
    """
    meta, method_hash = _method_hash(job, original_fp)
    if load_erased(pipe, ctx.run_dir, method_hash):
        log.info("reusing erased tensors from %s", ctx.run_dir / "erased")
        saved = json.loads((ctx.run_dir / "erased" / "meta.json").read_text())
        return pipe, saved.get("data_files", {})
    torch.manual_seed(ctx.seed)
    t0, mark = time.time(), len(ctx.reads)
    pipe = job.method.erase(pipe, job.task, ctx)
    method_reads = file_digests(ctx.reads.since(mark))
    extra = {"resolved": job.method.resolved, "erase_seconds": time.time() - t0, "data_files": method_reads}
    if job.method.diagnostics:  # per-step traces a method keeps for debugging (e.g. AdvAnchor)
        extra["diagnostics"] = job.method.diagnostics
    changed = save_erased(pipe, before, ctx.run_dir, {**meta, "method_hash": method_hash, **extra})
    log.info("%s changed %d tensors in %.1fs", job.method.name, len(changed), time.time() - t0)
    return pipe, method_reads


def _common_columns(job: Job, ctx: RunContext) -> dict[str, Any]:
    cfg, sampler = job.cfg, job.sampler
    return {"experiment": cfg.get("experiment_name", "adhoc"), "model": cfg["model"]["name"],
            "task": job.task.name, "concept": job.task.concept, "method": job.method.name, "seed": ctx.seed,
            "config_hash": job.config_hash,
            "model_source": cfg["model"].get("path") or cfg["model"].get("hub_id") or cfg["model"].get("source"),
            "sampler": json.dumps(asdict(sampler), sort_keys=True), "image_seeds": "task-fixed",
            "limit": cfg.get("limit"), "method_settings": json.dumps(job.method.settings(), sort_keys=True,
                                                                      default=str),
            # CPU results depend on the thread count (float reductions are split differently), so it is recorded.
            "device": f"cpu ({torch.get_num_threads()} threads)" if ctx.device.type == "cpu" else str(ctx.device),
            "dtype": str(ctx.dtype).removeprefix("torch."), **versions()}


def _evaluate(job: Job, pipe: Any, ctx: RunContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every evaluator of the task on ``pipe``.

    Returns:
        One row per (evaluator, split, metric) for ``metrics.csv``, and one per image of each metric that has
        per-image samples for ``per_image.csv``.
    """
    common, task, rows, images = _common_columns(job, ctx), job.task, [], []
    for label, ev, splits in job.evaluators:
        result = ev.evaluate(pipe, replace(task, splits={s: task.splits[s] for s in splits}) if splits else task, ctx)
        settings = json.dumps(ev.settings(), sort_keys=True, default=str)
        for split, metrics in result.items():
            for metric, value in metrics.items():
                if metric not in ev.higher_is_better:
                    raise ConfigError(f"evaluator '{label}' returned undeclared metric '{metric}'")
                score = value if isinstance(value, Score) else Score(float(value), len(task.splits.get(split, ())))
                if not math.isfinite(score.value):
                    log.warning("%s/%s/%s is not finite: %s", label, split, metric, score.value)
                info = ev.metric_info(split, metric)
                low, high, how = _interval(score, info.per_image, f"{label}/{split}/{metric}")
                rows.append({**common, "split": split, "evaluator": label, "metric": metric, "value": score.value,
                             "n": score.n, "higher_is_better": info.higher_is_better,
                             "metric_display": info.display or metric, "unit": info.unit,
                             "aggregate": info.aggregate(), "ci_low": low, "ci_high": high, "ci_method": how,
                             "evaluator_settings": settings})
                items = task.splits.get(split, ())
                aligned = len(items) == len(score.samples)  # attacks score their own prompt list
                images += [{"split": split, "evaluator": label, "metric": metric, "index": i, "value": v,
                            "prompt": items[i].prompt if aligned else "", "image_seed": items[i].seed if aligned else ""}
                           for i, v in enumerate(score.samples)]
    return rows, images


def _interval(score: Score, per_image: str, where: str) -> tuple[float, float, str]:
    """``(ci_low, ci_high, ci_method)`` of a score: bootstrapped over its samples, or the evaluator's own."""
    if score.ci is not None:
        return float(score.ci[0]), float(score.ci[1]), score.ci_method
    if not score.samples or not per_image:
        return math.nan, math.nan, score.ci_method or "no CI (no per-image values)"
    recomputed = stats.aggregate(score.samples, per_image)
    if not math.isclose(recomputed, score.value, rel_tol=1e-6, abs_tol=1e-9):
        # An evaluator whose samples do not give its value would get an interval around another number.
        log.warning("%s: the %s of its per-image values is %s, not its value %s; no CI", where, per_image,
                    recomputed, score.value)
        return math.nan, math.nan, f"no CI (per-image {per_image} {recomputed:.6g} != value)"
    low, high = stats.bootstrap_ci(score.samples, per_image)
    return low, high, stats.ci_method()


def summary_table(metrics_path: Path) -> str:
    """A short Markdown table of one run's results (split, evaluator, metric, value, n, direction)."""
    df = read_metrics(metrics_path)
    head = f"{df['method'].iloc[0]} on {df['model'].iloc[0]}/{df['task'].iloc[0]}/{df['concept'].iloc[0]}, " \
           f"seed {df['seed'].iloc[0]}: {metrics_path}"
    lines = [head, "", "| split | evaluator | metric | value | 95% CI | n | better |", "|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        better = {"true": "higher", "false": "lower"}.get(str(r.higher_is_better).lower(), "--")
        ci = f"{r.ci_low:.4g} to {r.ci_high:.4g}" if math.isfinite(r.ci_low) else "--"
        lines.append(f"| {r.split} | {r.evaluator} | {r.metric} | {r.value:.4g} | {ci} | {r.n} | {better} |")
    return "\n".join(lines) + "\n"
