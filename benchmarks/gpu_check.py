"""The prepared GPU check: generation, ESD-x and every method's first iterations on sd14_random, in one run.

    python benchmarks/gpu_check.py                  # one H100/H200: sd14_random, 512 px, fp16; about 8 minutes
    python benchmarks/gpu_check.py --smoke          # CPU, the tiny model, seconds: the same code paths

Builds ``sd14_random`` (no download) and measures, on one device:
    (a) generation at the model's sampler (512 px, DDIM 50, CFG 7.5) in fp16 at batch 1 and 16: erasebench's
        cached batched generator, the reference repositories' per-image fp32 loop, and the FLOP bound
        (UNet CFG pair x steps + VAE decode, counted with ``torch.utils.flop_counter``: about 1.61 TFLOP per
        CFG step at 512 px), each generator variant with SDPA (diffusers' default), without it (the classic
        attention processor), with channels-last, and with ``torch.compile`` on the UNet;
    (b) ESD-x iterations/s and peak GPU memory (the paper's 1000 iterations, projected from the measured rate);
    (c) the first iterations of every method (its ``smoke_settings``) with wall time and peak memory.
Writes ``gpu_check.json`` and ``gpu_check.md`` (one table per part) under ``--out``. A part that exceeds the
time budget is recorded as skipped, so the run always ends with its files. Goals (issue 20): generation >= 5x
the per-image loop and >= 40% of the FLOP bound; ESD-x 1000 iterations <= 10 min and <= 20 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_speed  # the benchmarks directory is not a package

from erasebench.api import PromptItem
from erasebench.generate import Sampler

VARIANTS = ("sdpa", "no_sdpa", "channels_last", "compile")


def _peak_mib(device: torch.device) -> int | None:
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _variant(pipe: Any, name: str) -> Any:
    """Set the UNet up for one generation variant (applied in VARIANTS order: each builds on a clean UNet)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor() if name == "no_sdpa" else AttnProcessor2_0())
    pipe.unet.to(memory_format=torch.channels_last if name in ("channels_last", "compile") else torch.contiguous_format)
    if name == "compile":
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def part_generation(pipe: Any, sampler: Sampler, device: torch.device, batches: tuple[int, ...], images: int,
                    variants: tuple[str, ...], deadline: float) -> list[dict[str, Any]]:
    """(a): images/s per batch size and variant, the per-image fp32 loop, and the FLOP bound."""
    items = [PromptItem(f"a photo of a church, view {i}", seed=i) for i in range(images)]
    flops = bench_speed.flops_per_image(pipe, sampler, device)
    peak, source = bench_speed.peak_flops(device, None)
    bound = peak / flops
    rows: list[dict[str, Any]] = []
    n_ref = max(2, images // 4)
    ref_pipe = pipe if next(pipe.unet.parameters()).dtype == torch.float32 else _fp32_copy(pipe)
    ref_rate = n_ref / bench_speed.bench_reference(ref_pipe, sampler, items[:n_ref], device)
    del ref_pipe
    rows.append({"generator": "per-image fp32 loop (reference scripts)", "batch": 1, "images_s": round(ref_rate, 3)})
    unet = pipe.unet
    for variant in variants:
        for batch in batches:
            if time.time() > deadline:
                rows.append({"generator": f"erasebench ({variant})", "batch": batch, "skipped": "time budget"})
                continue
            pipe.unet = unet
            _variant(pipe, variant)
            _reset_peak(device)
            seconds = bench_speed.bench_ours(pipe, sampler, batch, items, device)
            rows.append({"generator": f"erasebench ({variant})", "batch": batch, "images_s": round(images / seconds, 3),
                         "x_reference": round(images / seconds / ref_rate, 2),
                         "of_flop_bound": round(images / seconds / bound, 3), "peak_gpu_mib": _peak_mib(device)})
    pipe.unet = unet
    _variant(pipe, "sdpa")
    rows.append({"generator": "FLOP bound", "batch": None, "images_s": round(bound, 3),
                 "tflop_per_image": round(flops / 1e12, 4),
                 "tflop_per_cfg_step": round((flops - _vae_flops(pipe, sampler, device)) / sampler.steps / 1e12, 4),
                 "peak_tflops": round(peak / 1e12, 1), "peak_source": source})
    return rows


def _vae_flops(pipe: Any, sampler: Sampler, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    size = sampler.height // pipe.vae_scale_factor
    z = torch.randn(1, pipe.unet.config.in_channels, size, size, device=device, dtype=next(pipe.vae.parameters()).dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        pipe.vae.decode(z)
    return float(fc.get_total_flops())


def _fp32_copy(pipe: Any) -> Any:
    import copy

    return copy.deepcopy(pipe).to(torch.float32)


def part_esd(pipe: Any, iters: int, device: torch.device) -> dict[str, Any]:
    """(b): ESD-x seconds per iteration and peak memory; the paper's 1000 iterations projected."""
    _reset_peak(device)
    seconds = bench_speed.bench_esd_ours(pipe, iters, device)
    return {"iterations_timed": iters, "s_per_it": round(seconds, 3), "it_s": round(1 / seconds, 2),
            "projected_1000_it_min": round(1000 * seconds / 60, 1), "peak_gpu_mib": _peak_mib(device)}


def part_methods(pipe: Any, device: torch.device, deadline: float) -> list[dict[str, Any]]:
    """(c): every method's ``erase`` at its smoke settings, the UNet/text encoder restored after each."""
    from sd_arch_check import TASKS, _load_state

    state = {f"{c}.{k}": v.detach().clone() for c in ("unet", "text_encoder")
             for k, v in getattr(pipe, c).state_dict().items()}
    rows = []
    for name in TASKS:
        if time.time() > deadline:
            rows.append({"method": name, "skipped": "time budget"})
            continue
        rows.append(_one_method(name, pipe, device))
        _load_state(pipe, state)
    return rows


def _one_method(name: str, pipe: Any, device: torch.device) -> dict[str, Any]:
    from sd_arch_check import TASKS, smoke_method_and_task, smoke_run

    method, task = smoke_method_and_task(name, TASKS[name])
    with tempfile.TemporaryDirectory() as tmp:
        run = smoke_run(pipe, Path(tmp), device)
        _reset_peak(device)
        start = time.perf_counter()
        try:
            method.erase(pipe, task, run)
        except Exception as e:  # noqa: BLE001 - one method's failure is its row
            return {"method": name, "error": f"{type(e).__name__}: {e}"[:300]}
        bench_speed._sync(device)
        return {"method": name, "task": TASKS[name], "seconds": round(time.perf_counter() - start, 2),
                "peak_gpu_mib": _peak_mib(device)}


def table(rows: list[dict[str, Any]], keys: list[str] | None = None) -> str:
    """``rows`` as one Markdown table: columns ``keys`` (default: every key, in first-seen order)."""
    keys = keys or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The three parts as Markdown tables."""
    head = {k: v for k, v in result.items() if k not in ("generation", "esd", "methods")}
    return "\n\n".join([f"# gpu_check {json.dumps(head)}", "## (a) generation", table(result["generation"]),
                        "## (b) ESD-x", table([result["esd"]]), "## (c) methods", table(result["methods"])]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the three parts within the budget and write the JSON and Markdown files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few images and iterations")
    p.add_argument("--out", default="gpu_check_out", help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new measurements after this")
    args = p.parse_args(argv)
    started = time.time()
    deadline = started + args.budget_s
    from erasebench.models import load_pipeline

    model = "tiny" if args.smoke else "sd14_random"
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    node = _model_node(model)
    pipe = load_pipeline(node, device, dtype)
    sampler_node = {k: v for k, v in node["sampler"].items() if k != "batch_size"}
    sampler = Sampler(**{**sampler_node, **({"steps": 4} if args.smoke else {})})
    result: dict[str, Any] = {
        "model": model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "smoke": args.smoke,
        "sampler": f"{sampler.scheduler} {sampler.steps} steps, CFG {sampler.guidance_scale}, {sampler.height} px"}
    variants = VARIANTS[:3] if args.smoke else VARIANTS  # compiling the tiny UNet on CPU takes longer than the rest
    result["generation"] = part_generation(pipe, sampler, device, (1, 2) if args.smoke else (1, 16),
                                           4 if args.smoke else 32, variants, deadline)
    result["esd"] = part_esd(pipe, 2 if args.smoke else 20, device)
    result["methods"] = part_methods(pipe, device, deadline)
    result["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "gpu_check.md").write_text(markdown(result), encoding="utf-8")
    print(json.dumps({"out": str(out), "seconds": result["seconds"],
                      "failed_methods": [r["method"] for r in result["methods"] if "error" in r]}))
    return 0


def _model_node(model: str) -> dict[str, Any]:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=[f"model={model}"]),
                                      resolve=True)["model"]  # type: ignore[index, return-value]


if __name__ == "__main__":
    raise SystemExit(main())
