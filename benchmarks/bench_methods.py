"""Wall time and peak memory of each erasure method's ``erase`` (training or closed-form edit), one at a time.

    python benchmarks/bench_methods.py --model tiny --methods esd,uce --smoke          # CPU, seconds
    python benchmarks/bench_methods.py --model sd14_random --task style                # GPU: the paper settings

Each method runs in its own subprocess (so peak memory is that method's alone), with the settings a real run
would use: ``conf/method/<name>.yaml`` plus the model's preset, plus ``--set key=value`` overrides (e.g.
``--set iterations=100`` to time a shorter ESD and scale up), or the contract tests' ``smoke_settings`` with
``--smoke``. The time includes everything ``erase`` does (rendering its own training images through a fresh,
empty image cache; anchor search; optimisation), not model loading. Prints one JSON object per method
(method, seconds, peak GPU MiB or peak RSS MiB, device, settings) and a final JSON list.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf


def _compose(model: str, method: str, task: str, concept: str | None) -> dict[str, Any]:
    over = [f"model={model}", f"method={method}", f"task={task}"] + ([f"concept={concept}"] if concept else [])
    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=over), resolve=True)  # type: ignore


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``erase`` of ``args.one`` in this process."""
    from erasebench.api import RunContext
    from erasebench.configs import build_config, build_task
    from erasebench.generate import ImageCache, Sampler
    from erasebench.models import load_pipeline, resolve_device, resolve_dtype
    from erasebench.registry import METHODS

    cls = METHODS.get(args.one)  # an unknown name fails here, with the valid names, before Hydra's search-path dump
    cfg = _compose(args.model, args.one, args.task, args.concept)
    kwargs = {k: v for k, v in cfg["method"].items() if k != "name"}
    if args.smoke:
        kwargs.update(cls.smoke_settings)
    kwargs.update({k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    method = cls(build_config(cls, kwargs, "method"))
    task = build_task(cfg["task"], str(cfg["concept"]), limit=args.limit)
    device = resolve_device(args.device)
    dtype = resolve_dtype(str(cfg["model"].get("dtype", "auto")), device)
    node = dict(cfg["model"]["sampler"])
    batch = int(node.pop("batch_size", 8))
    pipe = load_pipeline(cfg["model"], device, dtype)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(Path(tmp) / "images", Sampler(**node), batch, progress=False)
        run = RunContext(seed=0, device=device, dtype=dtype, run_dir=Path(tmp) / "run", generate=cache,
                         original_images=lambda items: cache(pipe, items), cache_dir=Path(tmp))
        run.run_dir.mkdir()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        start = time.perf_counter()
        method.erase(pipe, task, run)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    out: dict[str, Any] = {"method": args.one, "model": args.model, "task": task.name, "concept": task.concept,
                           "seconds": round(seconds, 2), "settings": method.settings(), "torch": torch.__version__}
    if device.type == "cuda":
        out.update(device=torch.cuda.get_device_name(), peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20))
    else:  # ru_maxrss is KiB on Linux; it includes model loading, so it is an upper bound for erase alone
        out.update(device=f"cpu ({torch.get_num_threads()} threads)",
                   peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return out


def main(argv: list[str] | None = None) -> None:
    """Run every requested method in a subprocess and print their figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a conf/model/ name")
    p.add_argument("--task", default="smoke", help="a conf/task/ name (style for the SD models)")
    p.add_argument("--concept", default=None)
    p.add_argument("--methods", default="", help="comma list; default every registered method but none/dummy")
    p.add_argument("--smoke", action="store_true", help="use each method's smoke_settings (seconds on tiny)")
    p.add_argument("--set", action="append", default=[], help="method setting override key=value (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="cap images per task split")
    p.add_argument("--device", default="auto")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        try:
            print(json.dumps(run_one(args)))
        except Exception as e:  # reported as a row, so the parent keeps the other methods' figures
            print(json.dumps({"method": args.one, "error": f"{type(e).__name__}: {e}"}))
            raise SystemExit(1) from e
        return
    from erasebench.registry import METHODS

    names = [m for m in args.methods.split(",") if m] or [m for m in METHODS.names() if m not in ("none", "dummy")]
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, *(sys.argv[1:] if argv is None else argv)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        try:  # one failing method does not lose the others' figures
            row = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            row = {"method": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
