"""Every method on the Stable Diffusion v1.4 architecture, on CPU: it runs, trains what it declares, reloads.

    python benchmarks/sd_arch_check.py                       # all 13 methods on sd14_random at 128 px (CPU)
    python benchmarks/sd_arch_check.py --methods esd,uce --model tiny     # seconds: the check itself

``sd14_random`` is the real architecture (860M-parameter UNet, CLIP ViT-L/14 text tower, SD's BPE
tokenizer) with random weights, built once at latent size 16 (128 px) so that a CPU finishes. Each method
runs in a forked child of that process (its peak RSS is its own: the shared model plus what the method adds)
with its ``smoke_settings`` on a paper task's real prompts
(style ``van_gogh``, object ``church``, ``nudity``; two prompts per split), and the check asserts:

1. ``erase`` runs;
2. exactly the tensors of ``trained_tensors`` changed, by name, each of them;
3. the changed tensors saved as the runner saves them (``erased/tensors.safetensors``) load into the original
   pipeline (the erased one with its declared tensors restored from disk, as a fresh build would give it) and
   reproduce the erased UNet's and text encoder's outputs exactly;
4. a short evaluation: two erase-split images come out of the harness's cached generation (4 DDIM steps,
   decoded by the VAE) at the sampler's size.

Prints one JSON object per method (method, task, ok, seconds of ``erase``, peak RSS MiB, failures) and a
final JSON list; exits 1 if any method failed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

#: The paper task each method is checked on, so the three tasks' prompts all meet the real tokenizer.
TASKS = {"none": "style", "esd": "style", "abconcept": "style", "uce": "style", "doco": "style",
         "sdd": "nudity", "advunlearn": "nudity", "rece": "nudity", "trce": "nudity",
         "advanchor": "object", "allbutone": "object", "realera": "object", "sgrace": "object"}
CONCEPTS = {"style": "van_gogh", "object": "church", "nudity": "nudity", "smoke": "cat"}


def build(model: str, size: int) -> Any:
    from erasebench.models import build_sd14_random, build_tiny

    pipe = build_sd14_random(sample_size=size) if model == "sd14_random" else build_tiny()
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()  # as load_pipeline leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _outputs(pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's states for a fixed prompt and the UNet's prediction on a fixed latent."""
    ids = pipe.tokenizer(["a painting in the style of Van Gogh"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    states = pipe.text_encoder(ids)[0]
    size = pipe.unet.config.sample_size
    z = torch.randn(1, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    return states, pipe.unet(z, torch.tensor([500]), encoder_hidden_states=states).sample


def smoke_method_and_task(name: str, task_name: str, settings: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Method ``name`` at its paper settings plus ``settings`` (default: its ``smoke_settings``; no toy preset),
    and the task's ``CONCEPTS`` concept with two prompts per split."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from erasebench.configs import build_config, build_task
    from erasebench.registry import METHODS

    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[
            "model=tiny", f"method={name}", f"task={task_name}"]), resolve=True)
    cls = METHODS.get(name)
    node = {k: v for k, v in cfg["method"].items() if k != "name"}  # type: ignore[index, union-attr]
    extra = cls.smoke_settings if settings is None else settings
    method = cls(build_config(cls, {**node, **extra}, "method"))
    return method, build_task(cfg["task"], CONCEPTS[task_name], limit=2)  # type: ignore[index, arg-type]


def smoke_run(pipe: Any, tmp: Path, device: torch.device) -> Any:
    """A ``RunContext`` in ``tmp`` whose images (the method's own and the original model's) come from the
    harness's cached generation at 4 DDIM steps and the UNet's sample size, in the pipeline's dtype."""
    from erasebench.api import RunContext
    from erasebench.generate import ImageCache, Sampler

    px = pipe.vae_scale_factor * pipe.unet.config.sample_size
    cache = ImageCache(tmp / "images", Sampler(steps=4, height=px, width=px), 2, progress=False)
    return RunContext(seed=0, device=device, dtype=next(pipe.unet.parameters()).dtype, run_dir=tmp,
                      generate=cache, original_images=lambda items: cache(pipe, items), cache_dir=tmp)


def check_one(name: str, pipe: Any, task_name: str) -> dict[str, Any]:
    """Run the four checks for method ``name`` on ``pipe`` (edited in place: call it in a forked child)."""
    from safetensors.torch import load_file, save_file

    from erasebench.api import RunContext
    from erasebench.erased import load_erased, save_erased
    from erasebench.generate import ImageCache, Sampler, weight_digests

    method, task = smoke_method_and_task(name, task_name)
    px = pipe.vae_scale_factor * pipe.unet.config.sample_size
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = ImageCache(Path(tmp) / "images", Sampler(steps=4, guidance_scale=7.5, height=px, width=px), 2,
                           progress=False)
        run = RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=Path(tmp) / "run",
                         generate=cache, original_images=lambda items: cache(pipe, items), cache_dir=Path(tmp))
        run.run_dir.mkdir()
        declared = method.trained_tensors(pipe, task) or set()
        before = weight_digests(pipe)
        _save_state(pipe, declared, Path(tmp) / "original.safetensors", save_file)
        torch.manual_seed(0)
        start = time.perf_counter()
        pipe = method.erase(pipe, task, run)
        seconds = time.perf_counter() - start
        changed = set(save_erased(pipe, before, run.run_dir, {"method_hash": "check"}))
        if changed != declared:
            failures.append(f"undeclared changes {sorted(changed - declared)[:3]}, declared but unchanged "
                            f"{sorted(declared - changed)[:3]}")
        expected = _outputs(pipe)
        images = cache(pipe, task.splits["erase"][:2])
        _load_state(pipe, load_file(str(Path(tmp) / "original.safetensors")))  # back to the original model
        if weight_digests(pipe) != before:
            failures.append("restoring the declared tensors did not give the original model back")
        if not load_erased(pipe, run.run_dir, "check") and changed:
            failures.append("the saved tensors did not load")
        for what, a, b in zip(("text encoder", "UNet"), expected, _outputs(pipe)):
            if not torch.equal(a, b):
                failures.append(f"reloaded {what} differs by {float((a - b).abs().max()):.3g}")
    if [i.size for i in images] != [(px, px)] * 2:
        failures.append(f"evaluation images: {[i.size for i in images]}, not two of {px} px")
    return {"method": name, "task": task.name, "concept": task.concept, "ok": not failures,
            "seconds": round(seconds, 2), "trained_tensors": len(changed), "threads": torch.get_num_threads(),
            "failures": failures}


def _save_state(pipe: Any, keys: set[str], path: Path, save_file: Any) -> None:
    tensors = {k: getattr(pipe, k.split(".", 1)[0]).state_dict()[k.split(".", 1)[1]].contiguous() for k in keys}
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))


def _load_state(pipe: Any, tensors: dict[str, torch.Tensor]) -> None:
    for component in {k.split(".", 1)[0] for k in tensors}:
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(component + ".")}
        getattr(pipe, component).load_state_dict(state, strict=False)


def in_child(name: str, pipe: Any, task: str, fn: Any = None) -> dict[str, Any]:
    """Fork; the child runs ``fn(name, pipe, task)`` (default :func:`check_one`) and writes its row; the parent
    returns that row with the child's peak RSS."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        try:
            row = (fn or check_one)(name, pipe, task)
        except BaseException as e:  # noqa: BLE001 - any failure is this method's row, not the run's end
            row = {"method": name, "ok": False, "failures": [f"{type(e).__name__}: {e}",
                                                             *traceback.format_exc().splitlines()[-4:]]}
        os.write(write, json.dumps(row).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status, usage = os.wait4(pid, 0)
    row = json.loads(text) if text else {"method": name, "ok": False, "failures": [f"child died ({status})"]}
    return {**row, "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    """Build the model once, check each requested method in a forked child; print the rows; 1 if any failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd14_random", choices=["sd14_random", "tiny"])
    p.add_argument("--methods", default="", help="comma list (default: all 13 methods)")
    p.add_argument("--task", default="", help="one task for all (style, object, nudity, smoke); default per method")
    p.add_argument("--sample-size", type=int, default=16, help="sd14_random's latent size (16 = 128 px)")
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m] or list(TASKS)
    pipe = build(args.model, args.sample_size)
    rows = []
    for name in names:
        task = args.task or ("smoke" if args.model == "tiny" else TASKS[name])
        row = {**in_child(name, pipe, task), "model": args.model}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
