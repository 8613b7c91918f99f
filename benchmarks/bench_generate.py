"""Generation throughput (images/s) through the harness's own cached generator.

    python benchmarks/bench_generate.py --model tiny                 # CPU, seconds
    python benchmarks/bench_generate.py --model sd14_random --images 64 --batch-size 16   # GPU

Every image is new (a fresh temporary cache), so this measures sampling, VAE decoding and PNG writing.
It prints one JSON line: model, device, dtype, sampler, batch size, images, seconds, images/s, peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bench_speed import bench_ours  # benchmarks/ is on sys.path when this file runs as a script

from erasebench.api import PromptItem
from erasebench.generate import Sampler
from erasebench.models import load_pipeline, resolve_device, resolve_dtype


def main() -> None:
    """Parse arguments, warm up, then time the generation of ``--images`` new images."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a conf/model/ name")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's sampler.batch_size")
    p.add_argument("--steps", type=int, default=None, help="default: the model's sampler.steps")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[f"model={args.model}"]), resolve=True)
    model = cfg["model"]
    node = dict(model["sampler"])
    batch_size = args.batch_size or int(node.pop("batch_size", 8))
    node.pop("batch_size", None)
    if args.steps:
        node["steps"] = args.steps
    sampler = Sampler(**node)
    device = resolve_device(args.device)
    dtype = resolve_dtype(str(model.get("dtype", "auto")), device)
    pipe = load_pipeline(model, device, dtype)
    items = [PromptItem(f"a photo of object number {i}", seed=i) for i in range(args.images)]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = bench_ours(pipe, sampler, batch_size, items, device)  # the same timed loop as bench_speed's (a)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(json.dumps({
        "model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": str(dtype), "sampler": asdict(sampler),
        "batch_size": batch_size, "images": args.images, "seconds": round(seconds, 2),
        "images_per_s": round(args.images / seconds, 3), "peak_gib": None if peak is None else round(peak, 2),
        "torch": torch.__version__,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
