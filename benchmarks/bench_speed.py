"""Speed of erasebench against the reference repositories' loops and against the FLOP bound, in one run.

    python benchmarks/bench_speed.py --model tiny --images 16 --esd-iters 10          # CPU, about a minute
    python benchmarks/bench_speed.py --model sd14_random --images 128 --batch-size 32 --esd-iters 50   # GPU

Measures on the same device, with the model's sampler (sd14_random: 512 px, DDIM 50, CFG 7.5):
    (a) images/s of erasebench's generator (``ImageCache``: batched, the model's dtype, PNGs written);
    (b) images/s of the per-image loop the reference repositories use (ESD / AdvAnchor ``generate-images.py``:
        fp32 pipeline, batch 1, one pipeline call per image, PNG written);
    (c) the FLOP bound: UNet (x2 for classifier-free guidance) x steps + VAE decode FLOPs per image, counted with
        ``torch.utils.flop_counter``, against the device's peak rate (GPU: the dense bf16/fp16 tensor-core
        peak from the table below or ``--peak-tflops``; CPU: the fp32 rate this machine reaches on a large
        matmul, measured here, so the bound is a roofline of *this* CPU);
and ESD-x iterations/s of ``methods/esd.py`` against a straightforward reimplementation of the CompVis training
loop (fp32, batch 1, a second full UNet as the frozen model). Prints one JSON object with the ratios a/b, a/c
and esd_ours/esd_reference. Targets on an H100 (issue 8): a/b >= 5, a/c >= 0.4.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from erasebench.api import PromptItem, RunContext
from erasebench.erasure import ddim_scheduler, encode, esd_timesteps, partial_ddim_sample
from erasebench.generate import ImageCache, Sampler
from erasebench.models import load_pipeline, resolve_device, resolve_dtype

#: Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0,
               "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_flops(device: torch.device, override: float | None) -> tuple[float, str]:
    """Peak FLOP/s of ``device`` and where the number comes from."""
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"data sheet ({key}, dense bf16)"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * n**3 / (time.perf_counter() - start), "measured fp32 matmul 2048^3 (CPU roofline)"


def flops_per_image(pipe: Any, sampler: Sampler, device: torch.device) -> float:
    """UNet FLOPs for the CFG pair x steps, plus one VAE decode, for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae = pipe.unet, pipe.vae
    size = sampler.height // pipe.vae_scale_factor
    p = next(unet.parameters())
    z = torch.randn(2, unet.config.in_channels, size, size, device=device, dtype=p.dtype)
    emb = torch.randn(2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, device=device,
                      dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(z, torch.tensor([500, 500], device=device), encoder_hidden_states=emb)
    unet_flops = fc.get_total_flops() * sampler.steps
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        vae.decode(z[:1].to(next(vae.parameters()).dtype))
    return float(unet_flops + fc.get_total_flops())


def bench_ours(pipe: Any, sampler: Sampler, batch: int, items: list[PromptItem], device: torch.device) -> float:
    """(a): seconds for ``items`` through the harness's cached generator."""
    with tempfile.TemporaryDirectory() as tmp:
        ImageCache(Path(tmp) / "warm", sampler, batch, progress=False)(pipe, items[:batch])
        _sync(device)
        start = time.perf_counter()
        ImageCache(Path(tmp) / "timed", sampler, batch, progress=False).paths(pipe, items)
        _sync(device)
        return time.perf_counter() - start


def bench_reference(pipe: Any, sampler: Sampler, items: list[PromptItem], device: torch.device) -> float:
    """(b): seconds for ``items``, one fp32 pipeline call per image, as the reference scripts do."""
    with tempfile.TemporaryDirectory() as tmp:
        start = None
        for i, it in enumerate([items[0], *items]):  # the first call is a warm-up
            if i == 1:
                _sync(device)
                start = time.perf_counter()
            g = torch.Generator(device=device).manual_seed(it.seed)
            img = pipe(it.prompt, generator=g, num_inference_steps=sampler.steps, height=sampler.height,
                       width=sampler.width, guidance_scale=sampler.guidance_scale).images[0]
            img.save(Path(tmp) / f"{i}.png")
        _sync(device)
        return time.perf_counter() - start  # type: ignore[operator]


def bench_esd_ours(pipe: Any, iters: int, device: torch.device) -> float:
    """Seconds per ESD-x iteration of ``methods/esd.py`` (after one warm-up run of 2 iterations)."""
    from erasebench.api import Task
    from erasebench.methods.esd import ESD

    task = Task(name="bench", concept="van_gogh", concept_text="Van Gogh", kind="style", concepts={}, splits={})
    run = RunContext(seed=0, device=device, dtype=next(pipe.unet.parameters()).dtype, run_dir=Path("."),
                     generate=None, original_images=None)  # type: ignore[arg-type]
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "attn2" in k}
    ESD(ESD.Config(iterations=2, train_method="xattn")).erase(pipe, task, run)
    _sync(device)
    start = time.perf_counter()
    ESD(ESD.Config(iterations=iters, train_method="xattn")).erase(pipe, task, run)
    _sync(device)
    pipe.unet.load_state_dict(state, strict=False)
    return (time.perf_counter() - start) / iters


def bench_esd_reference(pipe: Any, iters: int, device: torch.device) -> float:
    """Seconds per iteration of the CompVis loop: fp32, batch 1, a deep-copied frozen UNet, plain Adam."""
    unet = copy.deepcopy(pipe.unet).float()
    frozen = copy.deepcopy(unet).requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if "attn2" in n]
    unet.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-5)
    emb_0, emb_p = encode(pipe, [""]).float(), encode(pipe, ["Van Gogh"]).float()
    sched = ddim_scheduler(pipe, 50)
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    start = 0.0
    for i in range(iters + 1):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        run_steps, t_ddpm = esd_timesteps(50, "compvis", gen)
        z0 = torch.randn(1, unet.config.in_channels, size, size, generator=gen).to(device)
        with torch.no_grad():
            z, _ = partial_ddim_sample(unet, sched, z0, emb_p, emb_0, 3.0, run_steps)
            t = torch.tensor([t_ddpm], device=device)
            e_0 = frozen(z, t, encoder_hidden_states=emb_0).sample
            e_p = frozen(z, t, encoder_hidden_states=emb_p).sample
        e_n = unet(z, t, encoder_hidden_states=emb_p).sample
        loss = F.mse_loss(e_n, e_0 - (e_p - e_0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    del unet, frozen
    return (time.perf_counter() - start) / iters


def main() -> None:
    """Run (a), (b), (c) and the ESD pair; print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a conf/model/ name")
    p.add_argument("--images", type=int, default=16, help="images for (a); (b) uses --reference-images")
    p.add_argument("--reference-images", type=int, default=None, help="default: min(images, 16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's sampler.batch_size")
    p.add_argument("--esd-iters", type=int, default=10, help="0 skips the ESD comparison")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[f"model={args.model}"]), resolve=True)
    model: dict[str, Any] = cfg["model"]  # type: ignore[index,assignment]
    node = dict(model["sampler"])
    batch = args.batch_size or int(node.pop("batch_size", 8))
    node.pop("batch_size", None)
    sampler = Sampler(**node)
    device = resolve_device(args.device)
    dtype = resolve_dtype(str(model.get("dtype", "auto")), device)
    items = [PromptItem(f"a photo of object number {i}", seed=i) for i in range(args.images)]
    n_ref = args.reference_images or min(args.images, 16)

    pipe = load_pipeline(model, device, dtype)
    out: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda"
                           else f"cpu ({torch.get_num_threads()} threads)", "dtype": str(dtype),
                           "sampler": asdict(sampler), "batch_size": batch, "torch": torch.__version__}
    a = args.images / bench_ours(pipe, sampler, batch, items, device)
    fpi = flops_per_image(pipe, sampler, device)
    peak, peak_src = peak_flops(device, args.peak_tflops)
    if args.esd_iters:
        out["esd_ours_it_s"] = round(1 / bench_esd_ours(pipe, args.esd_iters, device), 3)
    del pipe
    ref_pipe = load_pipeline(model, device, torch.float32)
    b = n_ref / bench_reference(ref_pipe, sampler, items[:n_ref], device)
    if args.esd_iters:
        out["esd_reference_it_s"] = round(1 / bench_esd_reference(ref_pipe, args.esd_iters, device), 3)
        out["esd_ours_over_reference"] = round(out["esd_ours_it_s"] / out["esd_reference_it_s"], 2)
    c = peak / fpi
    out.update({"a_images_s": round(a, 3), "b_reference_images_s": round(b, 3), "c_flop_bound_images_s": round(c, 3),
                "flops_per_image": int(fpi), "peak_tflops": round(peak / 1e12, 3), "peak_source": peak_src,
                "a_over_b": round(a / b, 2), "a_over_c": round(a / c, 3),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
