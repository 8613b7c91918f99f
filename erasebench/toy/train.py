"""Rebuild every toy asset from a fixed seed: ``python -m erasebench.toy.train``.

Stages: tokenizer -> VAE -> latent dataset -> UNet (+EMA, frozen random CLIP
text encoder) -> classifier -> pipeline/classifier saving -> quick evaluation ->
``train_config.json`` and ``SHA256SUMS``. ``--check`` only verifies checksums.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import ASSETS_DIR, CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, PIPELINE_SUBDIR
from .arch import (SCHEDULER_CONFIG, UNET_CONFIG, VAE_CONFIG, assemble_pipeline, build_scheduler,
                   build_text_encoder, build_unet, build_vae, count_params, dir_size_mb)
from .checksums import verify_checksums, write_checksums
from .classifier import accuracy_on_fresh, save_classifier, train_classifier
from .data import COLOR_NAMES, OBJECTS, STYLES, make_caption, render, vocabulary
from .tokenizer import build_tokenizer_files


def _lr_lambda(steps: int, warmup: int, floor: float = 0.1):  # type: ignore[no-untyped-def]
    """Linear warmup then cosine decay to ``floor`` x peak."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        p = min(1.0, (s - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * p))
    return f


def render_dataset(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` images; returns ``(images (n,3,H,W) float32, labels (n,3) obj/style/colour)``."""
    labels = np.stack([rng.integers(len(OBJECTS), size=n), rng.integers(len(STYLES), size=n),
                       rng.integers(len(COLOR_NAMES), size=n)], axis=1)
    imgs = np.stack([render(OBJECTS[o], STYLES[s], COLOR_NAMES[c], rng).transpose(2, 0, 1)
                     for o, s, c in labels])
    return imgs, labels


def train_vae(a: argparse.Namespace, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Train the VAE on fresh images: L1 reconstruction + small KL."""
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(a.vae_steps, max(1, a.vae_steps // 20)))
    bar = tqdm(range(a.vae_steps), desc="vae")
    for _ in bar:
        imgs, _ = render_dataset(a.vae_batch, rng)
        x = torch.from_numpy(imgs) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        # L1 alone drops minority textures (dots cover 25% of a shape: the median
        # colour is "solid"), so add MSE and an L1 on image gradients (edges).
        d = rec - x
        grad_err = ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
                    + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())
        rec_loss = d.abs().mean() + d.pow(2).mean() + a.vae_grad_weight * grad_err
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = rec_loss + a.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(l1=f"{rec_loss.item():.4f}", kl=f"{kl.item():.2f}")
    return vae.eval()


@torch.no_grad()
def save_reconstructions(vae, path: Path, seed: int) -> float:  # type: ignore[no-untyped-def]
    """Save a PNG of originals (odd rows) over reconstructions, one style per pair; returns L1."""
    from .data import to_pil

    rng = np.random.default_rng(seed)
    x = np.stack([render(OBJECTS[i % 5], STYLES[s], COLOR_NAMES[(i + s) % len(COLOR_NAMES)], rng)
                  .transpose(2, 0, 1) for s in range(len(STYLES)) for i in range(10)])
    rec = (vae.decode(vae.encode(torch.from_numpy(x) * 2 - 1).latent_dist.mean).sample / 2 + 0.5)
    rec = rec.clamp(0, 1).numpy()
    rows = []
    for s in range(len(STYLES)):
        for arr in (x, rec):
            rows.append(np.concatenate(list(arr[s * 10:(s + 1) * 10].transpose(0, 2, 3, 1)), axis=1))
    to_pil(np.concatenate(rows, axis=0)).resize((320 * 3, 320 * 3), 0).save(path)
    return float(np.abs(rec - x).mean())


@torch.no_grad()
def encode_dataset(vae, imgs: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Posterior mean and std of every image (so latents can be re-sampled)."""
    means, stds = [], []
    for i in tqdm(range(0, len(imgs), batch), desc="encode"):
        post = vae.encode(torch.from_numpy(imgs[i:i + batch]) * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


class CaptionEmbedder:
    """Frozen text encoder with a per-caption cache (captions repeat a lot)."""

    def __init__(self, tokenizer, text_encoder) -> None:  # type: ignore[no-untyped-def]
        self.tok, self.te, self.cache = tokenizer, text_encoder, {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self.cache})
        if new:
            ids = self.tok(new, padding="max_length", max_length=self.tok.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
            for c, h in zip(new, self.te(ids)[0]):
                self.cache[c] = h
        return torch.stack([self.cache[c] for c in captions])


def train_unet(a: argparse.Namespace, unet, embed: CaptionEmbedder, mean: torch.Tensor,  # type: ignore[no-untyped-def]
               std: torch.Tensor, labels: np.ndarray, scale: float, rng: np.random.Generator):
    """Epsilon-prediction training with the SD schedule, min-SNR weighting and EMA."""
    sched = build_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    # min-SNR-gamma weighting (Hang et al. 2023): faster convergence on a tiny budget.
    weight = torch.clamp(snr, max=a.min_snr_gamma) / snr if a.min_snr_gamma > 0 else torch.ones_like(snr)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.unet_lr, weight_decay=1e-2)
    lrs = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(a.unet_steps, a.unet_warmup))
    g = torch.Generator().manual_seed(a.seed + 1)
    bar = tqdm(range(a.unet_steps), desc="unet")
    for step in bar:
        idx = rng.integers(len(mean), size=a.unet_batch)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        caps = [make_caption(OBJECTS[o], STYLES[s], COLOR_NAMES[c], rng) for o, s, c in labels[idx]]
        t = torch.randint(0, len(acp), (a.unet_batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=embed(caps)).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lrs.step()
        decay = min(a.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def _versions() -> dict[str, str]:
    import diffusers
    import safetensors
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Run all stages and write the assets; returns the saved ``train_config`` dict."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()
    tok_dir = out / PIPELINE_SUBDIR / "tokenizer"
    tokenizer = build_tokenizer_files(vocabulary(), tok_dir)

    t = time.time()
    vae = train_vae(a, rng)
    times["vae_s"] = time.time() - t
    vae_l1 = save_reconstructions(vae, out / "vae_reconstructions.png", a.seed + 3)

    t = time.time()
    imgs, labels = render_dataset(a.dataset_size, rng)
    mean, std = encode_dataset(vae, imgs)
    scale = float(1.0 / (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(a.seed))).std())
    vae.register_to_config(scaling_factor=scale)  # SD convention: unit-variance latents
    del imgs
    times["dataset_s"] = time.time() - t

    t = time.time()
    text_encoder = build_text_encoder(tokenizer).eval().requires_grad_(False)
    unet = build_unet()
    ema = train_unet(a, unet, CaptionEmbedder(tokenizer, text_encoder), mean, std, labels, scale, rng)
    times["unet_s"] = time.time() - t

    pipe = assemble_pipeline(vae, text_encoder, tokenizer, ema)
    pipe.save_pretrained(str(out / PIPELINE_SUBDIR), safe_serialization=True)

    t = time.time()
    clf = train_classifier(a.clf_steps, a.seed + 2)
    save_classifier(clf, out / CLASSIFIER_WEIGHTS, out / CLASSIFIER_CONFIG)
    times["classifier_s"] = time.time() - t
    times["train_total_s"] = time.time() - t0

    metrics: dict[str, Any] = {}
    if a.clf_eval_n > 0:
        metrics["classifier_object_acc"], metrics["classifier_style_acc"] = accuracy_on_fresh(
            clf, a.clf_eval_n, a.seed + 1000)
    if a.eval_n > 0:
        from .sample_grid import evaluate_pipeline, save_grid

        pipe.set_progress_bar_config(disable=True)
        res = evaluate_pipeline(pipe, clf, a.eval_n, seed=a.seed + 2000, steps=a.eval_steps,
                                guidance=a.eval_guidance)
        save_grid(res["images"], str(out / "eval_grid.png"))
        metrics.update({k: res[k] for k in ("object_acc", "style_acc", "per_concept", "steps",
                                             "guidance", "n_per_concept", "seed")})
    cfg = {
        "args": {k: v for k, v in vars(a).items() if k != "check"},
        "architecture": {"vae": VAE_CONFIG, "unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG,
                         "text_encoder": text_encoder.config.to_dict(),
                         "text_encoder_trained": False, "vae_scaling_factor": scale,
                         "vae_recon_l1": vae_l1},
        "params": {"vae": count_params(vae), "unet": count_params(ema),
                   "text_encoder": count_params(text_encoder), "classifier": count_params(clf)},
        "weights_mb": dir_size_mb(out), "times_s": times, "metrics": metrics,
        "versions": _versions(), "command": " ".join(sys.argv),
    }
    (out / "train_config.json").write_text(json.dumps(cfg, indent=2, default=str))
    write_checksums(out)
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults reproduce the shipped assets)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ASSETS_DIR), help="assets directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--vae-steps", type=int, default=900)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-grad-weight", type=float, default=0.5, help="weight of the edge loss")
    ap.add_argument("--vae-kl", type=float, default=1e-5, help="KL weight per latent element")
    ap.add_argument("--dataset-size", type=int, default=30000, help="images encoded for the UNet")
    ap.add_argument("--unet-steps", type=int, default=3200)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--unet-warmup", type=int, default=100)
    ap.add_argument("--ema-decay", type=float, default=0.998)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0, help="0 disables min-SNR weighting")
    ap.add_argument("--clf-steps", type=int, default=500)
    ap.add_argument("--clf-eval-n", type=int, default=1000, help="fresh images for classifier accuracy")
    ap.add_argument("--eval-n", type=int, default=8, help="generated images per concept (0: skip)")
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--eval-guidance", type=float, default=7.5)
    ap.add_argument("--check", action="store_true", help="only verify SHA256SUMS and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    a = parse_args(argv)
    if a.check:
        problems = verify_checksums(a.out)
        print("\n".join(problems) if problems else f"all weight checksums OK in {a.out}")
        raise SystemExit(1 if problems else 0)
    cfg = run(a)
    print(json.dumps({"times_s": cfg["times_s"], "metrics": {k: v for k, v in cfg["metrics"].items()
                                                              if k != "per_concept"},
                      "weights_mb": cfg["weights_mb"]}, indent=2))


if __name__ == "__main__":
    main()
