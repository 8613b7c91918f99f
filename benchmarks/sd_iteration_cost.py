"""Seconds and FLOPs per training iteration of every method on the SD v1.4 architecture (CPU), and what they
project for the paper settings on one H100.

    python benchmarks/sd_iteration_cost.py --out sd_cost     # sd14_random at 64 px on CPU: about an hour
    python benchmarks/sd_iteration_cost.py --model tiny --methods esd,uce --out /tmp/c    # seconds

Each method runs in a forked child of one ``sd14_random`` build at its **paper settings**, with only the counts
of ``TIMING`` lowered (optimiser steps to 3-4, anchor images and trajectories to a few), so that every timed
iteration has the paper's structure (DDIM chain length, batch, attack steps) while the fixed costs stay small.
A post-step hook on the method's optimiser stamps the time and the running FLOP count
(``torch.utils.flop_counter``, text encoder and the rest); an iteration is the interval between two optimiser
steps, and its figure is the mean interval (methods that draw t at random vary from one to the next).
AdvUnlearn is timed with a 3-step attack and extrapolated to its 30 steps (``ATTACK``).
S-GRACE's intervals are its edit steps, and one of them also holds a round's attack: its mean is not the
paper's mix (4 attacks in 200 steps); read ``intervals_s``.

The projection to 512 px on one H100 is arithmetic, not a measurement:

* FLOPs at 512 px = text-encoder FLOPs + everything else x (UNet forward at latent 64 / at the measured
  latent), the ratio counted on the meta device. All UNet calls of an iteration scale alike (FLOPs are linear
  in batch, backward ops scale with their forward ones); the few non-UNet FLOPs that scale with resolution
  (a VAE pass, DoCo's latent discriminator) are scaled by the UNet's ratio too (the VAE decode's is printed
  beside it).
* Utilisation comes from the published anchors (SD 1.5, fp16, A100, batch 1, 50 DDIM steps with CFG:
  1.59 s/img plain diffusers, 1.07 s compiled): their FLOPs (50 CFG steps + one VAE decode, counted here)
  over 1.59 s (or 1.07 s) and the A100's 312 TFLOP/s fp16 dense peak. The H100 estimate is the iteration's
  FLOPs over 989.4 TFLOP/s (H100 SXM fp16 dense; both peaks from ``bench_speed.PEAK_TFLOPS``) times each
  utilisation, i.e. a range from "plain" to "compiled".
* Paper minutes = the paper's optimiser steps (``paper_steps``) x that; fixed costs (anchor images,
  trajectories, closed-form stages) are not in it.

Writes ``sd_iteration_cost.json`` and ``sd_iteration_cost.md`` under ``--out``; exits 1 if a method failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_arch_check  # the benchmarks directory is not a package
from bench_speed import PEAK_TFLOPS
from gpu_check import table

#: Counts lowered from the paper settings (every other setting stays the paper's).
TIMING: dict[str, dict[str, Any]] = {
    "esd": {"iterations": 4},
    "sdd": {"steps": 4},
    "abconcept": {"steps": 4, "num_anchor_images": 8},
    "advanchor": {"steps": 2},  # one interval: 30 anchor steps and an unlearning step
    # one warm-up interval, then two with a 3-step attack; 30 steps are extrapolated (see ATTACK)
    "advunlearn": {"iterations": 4, "warmup_iterations": 2, "attack_steps": 3},
    "allbutone": {"steps": 4},
    "doco": {"steps": 4, "warm_up": 0, "num_anchor_images": 8},
    "realera": {"lora_steps": 4},
    "trce": {"num_trajectories": 2, "epochs": 2, "preserve_prompts": 64},  # stage 1 encodes the prompts once
    "sgrace": {"rounds": 2, "edit_steps": 3, "concept_lists": "task", "projection": "none"},
    "uce": {}, "rece": {},  # closed form: the paper settings; the figure is one solve
}
#: AdvUnlearn's attack steps timed, and the paper's: an attack iteration's cost is the warm-up interval plus
#: (paper / timed) x its excess over it (the attack steps are alike: each a fresh x_t and a gradient step).
ATTACK = {"advunlearn": (3, 30)}
A100_FP16, H100_FP16 = PEAK_TFLOPS["A100"] * 1e12, PEAK_TFLOPS["H100 SXM"] * 1e12
ANCHORS_S = {"plain": 1.59, "compiled": 1.07}


def paper_steps(name: str, method: Any, kind: str) -> int | None:
    """Optimiser steps at the paper settings (``method`` carries the paper values of the uncounted keys)."""
    c = type(method.config)()  # the dataclass defaults = the paper's
    if name == "abconcept":
        paper = sys.modules[type(method).__module__].PAPER  # steps per task kind
        return int(paper.get(kind, paper["object"])[1])
    steps = {"esd": "iterations", "sdd": "steps", "advanchor": "steps", "advunlearn": "iterations",
             "allbutone": "steps", "realera": "lora_steps"}
    if name in steps:
        return int(getattr(c, steps[name]))
    return {"doco": lambda: c.steps - c.warm_up - 1, "trce": lambda: c.num_trajectories * c.epochs,
            "sgrace": lambda: c.rounds * c.edit_steps}.get(name, lambda: None)()


def _split(counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    """The text encoder's FLOPs and everything else's: the module tracker attributes a text encoder's backward
    that runs after the UNet's to both, so only the text encoder's own bucket is exact."""
    text = sum(counts.get("CLIPTextModel", {}).values())
    return {"text": text, "rest": sum(counts.get("Global", {}).values()) - text}


def measure(name: str, pipe: Any, task_name: str) -> dict[str, Any]:
    """Run ``name`` at the timing settings; stamp time and FLOPs at each of its optimiser's steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from erasebench import erasure

    method, task = sd_arch_check.smoke_method_and_task(name, task_name, TIMING.get(name, {}))
    stamps: list[tuple[float, dict[str, int]]] = []
    counter = FlopCounterMode(display=False)
    init = erasure.Trainer.__init__

    def patched(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self.opt.register_step_post_hook(lambda *_: stamps.append((time.perf_counter(),
                                                                   _split(counter.get_flop_counts()))))

    erasure.Trainer.__init__ = patched  # type: ignore[method-assign]  # a forked child: nothing else sees it
    with tempfile.TemporaryDirectory() as tmp:
        run = sd_arch_check.smoke_run(pipe, Path(tmp), torch.device("cpu"))
        torch.manual_seed(0)
        start = time.perf_counter()
        with counter:
            method.erase(pipe, task, run)
        seconds = time.perf_counter() - start
    gaps = [(b[0] - a[0], {k: b[1][k] - a[1][k] for k in a[1]}) for a, b in zip(stamps, stamps[1:])]
    row: dict[str, Any] = {"method": name, "task": task.name, "ok": True, "erase_s": round(seconds, 1),
                           "timed_steps": len(stamps), "paper_steps": paper_steps(name, method, task.kind),
                           "threads": torch.get_num_threads(), "latent": pipe.unet.config.sample_size}
    if gaps:
        row.update(s_per_it=round(statistics.mean(g[0] for g in gaps), 2),
                   flops_per_it={k: round(statistics.mean(g[1][k] for g in gaps)) for k in gaps[0][1]},
                   intervals_s=[round(g[0], 2) for g in gaps], first_step_s=round(stamps[0][0] - start, 1))
    if name in ATTACK and len(gaps) >= 2:
        row.update(_extrapolate_attack(gaps, *ATTACK[name], type(method.config)()))
    return row


def _extrapolate_attack(gaps: list[tuple[float, dict[str, int]]], timed: int, paper: int,
                        defaults: Any) -> dict[str, Any]:
    """Per-iteration figures at the paper's attack length, averaged over its warm-up and attack iterations."""
    (base_s, base_f), attack = gaps[0], gaps[1:]
    k = paper / timed
    att_s = base_s + k * (statistics.mean(g[0] for g in attack) - base_s)
    att_f = {key: base_f[key] + k * (statistics.mean(g[1][key] for g in attack) - base_f[key]) for key in base_f}
    w = defaults.warmup_iterations / defaults.iterations  # the share of warm-up iterations at the paper settings
    return {"s_per_it": round(w * base_s + (1 - w) * att_s, 2), "attack_it_s_extrapolated": round(att_s, 1),
            "flops_per_it": {key: round(w * base_f[key] + (1 - w) * att_f[key]) for key in base_f}}


def scale_ratios(latent: int) -> dict[str, float]:
    """FLOPs at 512 px over FLOPs at ``latent`` (UNet forward, VAE decode) and the anchors' FLOPs, on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    from erasebench.models import build_sd14_random

    meta = build_sd14_random(torch.device("meta"), sample_size=64)

    def count(fn: Any) -> int:
        with FlopCounterMode(display=False) as m:
            fn()
        return m.get_total_flops()

    def unet(n: int) -> int:
        z, s = torch.empty(2, 4, n, n, device="meta"), torch.empty(2, 77, 768, device="meta")
        return count(lambda: meta.unet(z, torch.tensor([500, 500], device="meta"), encoder_hidden_states=s))

    def vae(n: int) -> int:
        return count(lambda: meta.vae.decode(torch.empty(1, 4, n, n, device="meta")))

    u64, v64 = unet(64), vae(64)
    return {"unet": u64 / unet(latent), "vae": v64 / vae(latent), "cfg_step_512_tflop": u64 / 1e12,
            "vae_decode_512_tflop": v64 / 1e12, "anchor_tflop_per_img": (50 * u64 + v64) / 1e12}


def utilisation(ratios: dict[str, float]) -> dict[str, float]:
    """The A100's utilisation in each published anchor: its FLOPs per image over seconds x fp16 peak."""
    return {label: ratios["anchor_tflop_per_img"] * 1e12 / s / A100_FP16 for label, s in ANCHORS_S.items()}


def project(row: dict[str, Any], ratios: dict[str, float]) -> dict[str, Any]:
    """The H100 projection of one measured row (see the module docstring)."""
    f = row.get("flops_per_it")
    if not f:
        return {}
    tflop = (f["rest"] * ratios["unet"] + f["text"]) / 1e12
    out: dict[str, Any] = {"tflop_per_it_512": round(tflop, 2)}
    for label, util in utilisation(ratios).items():
        s_it = tflop * 1e12 / (H100_FP16 * util)
        out[f"h100_s_per_it_{label}"] = round(s_it, 3)
        if row.get("paper_steps"):
            out[f"h100_paper_min_{label}"] = round(row["paper_steps"] * s_it / 60, 1)
    return out


def markdown(rows: list[dict[str, Any]], ratios: dict[str, float]) -> str:
    """The rows as one Markdown table, the arithmetic's constants above it."""
    util = utilisation(ratios)
    head = (f"UNet CFG step at 512 px: {ratios['cfg_step_512_tflop']:.3f} TFLOP; "
            f"VAE decode {ratios['vae_decode_512_tflop']:.3f}; "
            f"anchor image {ratios['anchor_tflop_per_img']:.1f} TFLOP -> A100 utilisation "
            f"{util['plain']:.1%} plain, {util['compiled']:.1%} compiled; scale to 512 px: all but the text "
            f"encoder x{ratios['unet']:.2f} (the UNet's; the VAE decode's alone would be x{ratios['vae']:.2f}).")
    keys = ["method", "task", "ok", "s_per_it", "erase_s", "tflop_per_it_512", "paper_steps", "h100_s_per_it_plain",
            "h100_s_per_it_compiled", "h100_paper_min_plain", "h100_paper_min_compiled"]
    lines = [head, "", table(rows, keys)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build the model, measure each method in a forked child, project, write the JSON and Markdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd14_random", choices=["sd14_random", "tiny"])
    p.add_argument("--methods", default="", help="comma list (default: the 12 erasing methods)")
    p.add_argument("--sample-size", type=int, default=8, help="sd14_random's latent size (8 = 64 px)")
    p.add_argument("--out", default="sd_cost", help="directory for the JSON and Markdown files")
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m] or list(TIMING)
    pipe = sd_arch_check.build(args.model, args.sample_size)
    ratios = scale_ratios(pipe.unet.config.sample_size) if args.model == "sd14_random" else {
        "unet": 1.0, "vae": 1.0, "cfg_step_512_tflop": 0.0, "vae_decode_512_tflop": 0.0, "anchor_tflop_per_img": 1.0}
    rows = []
    for name in names:
        task = "smoke" if args.model == "tiny" else sd_arch_check.TASKS[name]
        row = sd_arch_check.in_child(name, pipe, task, measure)
        row = {**row, **project(row, ratios), "model": args.model}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sd_iteration_cost.json").write_text(json.dumps({"ratios": ratios, "rows": rows}, indent=1))
    (out / "sd_iteration_cost.md").write_text(markdown(rows, ratios))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
