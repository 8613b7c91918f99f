"""One run: load the model, erase, evaluate, write ``metrics.csv``.

Every input is validated before the model loads, so a typo fails in a second, not after an hour of
training. A run whose ``metrics.csv`` carries the same config hash is skipped, and a run killed during
evaluation reuses the erased tensors it saved, so relaunching a sweep redoes no finished work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from erasebench.api import PromptItem, RunContext, Score
from erasebench.configs import DATA_READS, build_config, build_evaluators, build_task
from erasebench.errors import ConfigError
from erasebench.generate import ImageCache, Sampler, fingerprint, weight_digests
from erasebench.models import load_pipeline, resolve_device, resolve_dtype
from erasebench.registry import METHODS
from erasebench.results import atomic_write_text, config_hash, file_digests, finished_hash, inputs_unchanged
from erasebench.results import load_erased, save_erased, versions, write_metrics

log = logging.getLogger("erasebench")


def _plugin_kwargs(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "name"}


def _link_images(paths: Sequence[Path], out: Path) -> None:
    # Hard links give each run a browsable images/ folder without copying the cache.
    out.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(paths):
        dst = out / f"{i:05d}.png"
        if dst.exists():
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())


def run(cfg: Mapping[str, Any], run_dir: Path) -> Path:
    """Run one (model, method, task, concept, seed) job.

    Args:
        cfg: The resolved config (a plain dict of the composed Hydra config, without ``hydra``).
        run_dir: The run directory.

    Returns:
        The path of ``metrics.csv``.
    """
    started = time.time()
    chash = config_hash(cfg)
    metrics_path, inputs_path = run_dir / "metrics.csv", run_dir / "data_files.json"
    if finished_hash(run_dir) == chash:
        # A run from before data files were recorded has no data_files.json and counts as up to date.
        if inputs_unchanged(json.loads(inputs_path.read_text()) if inputs_path.exists() else {}):
            log.info("skip: %s is done (config %s)", run_dir, chash)
            return metrics_path
        log.info("redo: a data file %s read has changed since it finished", run_dir)
    DATA_READS.clear()

    # Validate everything before the model loads.
    method_cls = METHODS.get(str(cfg["method"]["name"]))
    method = method_cls(build_config(method_cls, _plugin_kwargs(cfg["method"]), "method"))
    task = build_task(cfg["task"], str(cfg["concept"]), cfg.get("limit"))
    evaluators = build_evaluators(task)
    device = resolve_device(str(cfg["device"]))
    dtype = resolve_dtype(str(cfg["model"].get("dtype", "auto")), device)
    sampler_node = dict(cfg["model"]["sampler"])
    batch_size = int(sampler_node.pop("batch_size", 8))
    sampler = Sampler(**sampler_node)
    cache = ImageCache(Path(cfg["paths"]["cache_dir"]) / "images", sampler, batch_size)

    pipe = load_pipeline(cfg["model"], device, dtype)
    original_fp, before = fingerprint(pipe), weight_digests(pipe)
    original_pipe: list[Any] = []

    def original_images(items: Sequence[PromptItem]) -> list[Any]:
        # The original model's images are usually cached (generated before erasure); reload only if not.
        paths = [cache.directory(None, original_fp) / cache.filename(it) for it in items]
        if all(p.exists() for p in paths):
            from PIL import Image

            return [Image.open(p).convert("RGB") for p in paths]
        if not original_pipe:
            original_pipe.append(load_pipeline(cfg["model"], device, dtype))
        return cache(original_pipe[0], items)

    ctx = RunContext(seed=int(cfg["seed"]), device=device, dtype=dtype, run_dir=run_dir, generate=cache,
                     original_images=original_images, limit=cfg.get("limit"), cache_dir=cache.root.parent)
    if any(e.needs_original for _, e, _ in evaluators):
        for items in task.splits.values():
            cache.paths(pipe, items)

    # Everything that changes the erased weights; saved tensors are reused only when all of it matches.
    method_meta = {"method": method.name, "settings": method.settings(), "task": task.name, "concept": task.concept,
                   # The evaluators never change the weights: a run that only adds or changes one reuses them.
                   "task_config": config_hash({"task": {k: v for k, v in cfg["task"].items() if k != "evaluators"}}),
                   "seed": ctx.seed, "model_fingerprint": original_fp}
    method_hash = hashlib.sha256(json.dumps(method_meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if load_erased(pipe, run_dir, method_hash):
        log.info("reusing erased tensors from %s", run_dir / "erased")
        method_reads = json.loads((run_dir / "erased" / "meta.json").read_text()).get("data_files", {})
    else:
        torch.manual_seed(ctx.seed)
        t0 = time.time()
        before_reads = set(DATA_READS)
        pipe = method.erase(pipe, task, ctx)
        method_reads = file_digests(k for k in DATA_READS if k not in before_reads)
        resolved = getattr(method, "resolved", None)  # settings a method derived from the task (e.g. "auto")
        extra = {"resolved": resolved, "erase_seconds": time.time() - t0, "data_files": method_reads}
        if getattr(method, "diagnostics", None):  # per-step traces a method keeps for debugging (e.g. AdvAnchor)
            extra["diagnostics"] = method.diagnostics
        changed = save_erased(pipe, before, run_dir, {**method_meta, "method_hash": method_hash, **extra})
        log.info("%s changed %d tensors in %.1fs", method.name, len(changed), time.time() - t0)

    rows: list[dict[str, Any]] = []
    common = {"experiment": cfg.get("experiment_name", "adhoc"), "model": cfg["model"]["name"], "task": task.name,
              "concept": task.concept, "method": method.name, "seed": ctx.seed, "config_hash": chash,
              "model_source": cfg["model"].get("path") or cfg["model"].get("hub_id") or cfg["model"].get("source"),
              "sampler": json.dumps(asdict(sampler), sort_keys=True), "image_seeds": "task-fixed",
              "limit": cfg.get("limit"), "method_settings": json.dumps(method.settings(), sort_keys=True, default=str),
              # CPU results depend on the thread count (float reductions are split differently), so it is recorded.
              "device": f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device),
              "dtype": str(dtype).removeprefix("torch."), **versions()}
    for label, ev, splits in evaluators:
        result = ev.evaluate(pipe, replace(task, splits={s: task.splits[s] for s in splits}) if splits else task, ctx)
        settings = json.dumps(ev.settings(), sort_keys=True, default=str)
        for split, metrics in result.items():
            for metric, value in metrics.items():
                if metric not in ev.higher_is_better:
                    raise ConfigError(f"evaluator '{label}' returned undeclared metric '{metric}'")
                score = value if isinstance(value, Score) else Score(float(value), len(task.splits.get(split, ())))
                if not math.isfinite(score.value):
                    log.warning("%s/%s/%s is not finite: %s", label, split, metric, score.value)
                rows.append({**common, "split": split, "evaluator": label, "metric": metric, "value": score.value,
                             "n": score.n, "higher_is_better": ev.higher_is_better[metric],
                             "evaluator_settings": settings})
    for split, items in task.splits.items():
        _link_images(cache.paths(pipe, items), run_dir / "images" / split)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        row.update(duration_s=round(time.time() - started, 2), finished_at=finished)
    # Before metrics.csv, which marks the run finished. The method's files were hashed after erasure.
    task_reads = file_digests(k for k in DATA_READS if k not in method_reads)
    atomic_write_text(inputs_path, json.dumps({**method_reads, **task_reads}, indent=1))
    write_metrics(rows, metrics_path)
    log.info("wrote %d rows to %s (%d images generated)", len(rows), metrics_path, cache.generated)
    return metrics_path


def summary_table(metrics_path: Path) -> str:
    """A short Markdown table of one run's results (split, evaluator, metric, value, n, direction)."""
    import pandas as pd

    df = pd.read_csv(metrics_path)
    head = f"{df['method'].iloc[0]} on {df['model'].iloc[0]}/{df['task'].iloc[0]}/{df['concept'].iloc[0]}, " \
           f"seed {df['seed'].iloc[0]}: {metrics_path}"
    lines = [head, "", "| split | evaluator | metric | value | n | better |", "|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        better = "higher" if str(r.higher_is_better).lower() == "true" else "lower"
        lines.append(f"| {r.split} | {r.evaluator} | {r.metric} | {r.value:.4g} | {r.n} | {better} |")
    return "\n".join(lines) + "\n"
