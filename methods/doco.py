"""DoCo: Unlearning Concepts in Diffusion Model via Concept Domain Correction and Concept Preserving Gradient
(Wu, Zhou, Yang, Wang, Chang, Zhu, Hu, Zhou, Yang; AAAI 2025).

Paper: arXiv 2405.15304 (AAAI version). Reference code: the authors' github.com/yongliang-wu/DoCo at commit
ebf6ff4 (``train.py``, ``DoCo/gan.py``, ``DoCo/gradient_clip.py``, the README commands). The third-party
collection ``justinhylee135/CUIG`` (read at dd22048) holds no DoCo code; ``fmp453/erase-eval`` (fab9900,
``train_methods/utils_doco.py``) copies the authors' ``adjust_gradient`` unchanged.

DoCo builds on AbConcept's setup (anchor images rendered by the original model from anchor captions, target
captions that name the concept c*; the anchor captions, target captions and anchor images come from
:mod:`erasebench.methods.abconcept`, imported rather than copied). Instead of regressing the target prompt's
noise prediction onto the anchor's, it aligns the two *output domains* adversarially. For a batch of anchor
latents x, x_t = q_sample(x, t), t ~ U{0..999}:

    real = x0(eps*(x_t, p_anchor, t))          (eps*: the frozen original model)
    fake = x0(eps_theta(x_t, p_target, t))     x0(e) = (x_t - sqrt(1 - abar_t) e) / sqrt(abar_t)
    D:  PatchGAN on the 4-channel x0 latents, a map of logits (one per patch), not one score per image
    L_D   = BCE(D(real), 0) + BCE(D(fake), 1)          (mean over the patch map; the reference's labels:
    L_adv = BCE(D(fake), 0)                             anchor = 0, target = 1)
    L_p   = mean((eps_theta(x'_t, p_anchor', t') - eps')^2)   on other anchor images (prior preservation)

Each iteration trains D on L_D (Adam, betas (0.5, 0.999)); after ``warm_up`` + 1 discriminator-only iterations
the UNet's cross-attention k/v also get a step. With the concept-preserving gradient (``surgery``), the two
gradients are clipped (total norm 1 each, as ``norm_grad``) and, per trained tensor, with
cos = <g_adv, g_p> / (|g_adv| |g_p|) and g_p^ = g_p / |g_p|:

    reference (authors' ``adjust_gradient``):  g = g_adv - lambda * cos * g_p^         if cos < 0
    project   (exact projection, PCGrad; the paper's full text was not read):
              g = g_adv - lambda * <g_adv, g_p^> g_p^   if cos < 0
    off:  g = grad(adv_weight * L_adv + 0.1 * prior_loss_weight * L_p)       (the reference without surgery)

and only g is applied (AdamW): with surgery, L_p steers the update's direction but is not itself descended,
as in the reference. ``reference`` equals ``project`` when |g_adv| = 1; after the total-norm clip each
tensor's |g_adv| < 1, so the reference removes more than the conflicting component (the conflicting part is
replaced by a positive multiple of g_p^).

README settings (the defaults; the authors' README commands are the only primary source of settings):
cross-attention k/v (``xattn_kv``), AdamW lr 4.8e-5 (6e-6 x batch 8 with ``--scale_lr``; weight decay 1e-2),
batch 8 (+8 prior images), gradient norm clip 1, discriminator lr 5e-4 for styles and 1e-4 for objects and
nudity (``disc_lr: 0``), 2000 iterations, the UNet training in those after iteration 1000 (``global_step >
warm_up``), lambda 1, prior preservation on, 1000 anchor images from 200 captions (``--num_class_images``),
horizontal flips,
and CustomDiffusion's attention processor (no gradient through the start token's cross-attention key/value,
``detach_start_token``).

Deviations:
    - Anchor captions and images as AbConcept's here (task captions, the harness sampler, cached images)
      instead of LAION-retrieved/LLM captions rendered with DPM-Solver 25 steps, CFG 6.
    - The discriminator has ``disc_blocks`` stride-2 blocks (64, 128, 256, 512 channels); the reference's four
      need a >= 32x32 latent, so ``0`` (auto) takes the most blocks (<= 4) that leave a >= 4x4 map before the
      last 4x4 convolution (4 on SD's 64x64 latents, as the reference; 1 on the toy world's 8x8).
    - The discriminator's weights start from a generator seeded with the run seed (repeatable runs).
    - In the reference the generator's adversarial loss also back-propagates into the discriminator and
      those gradients are added to L_D's (no ``zero_grad`` in between); here the discriminator steps on L_D
      alone, the standard GAN update.
    - No random-resize augmentation (the ``--noaug`` mask is unused by the reference's DoCo loss anyway); the
      README's object and nudity commands also rescale or pad the images and prefix the target captions.
    - Anchors are the task's ("a person" for nudity, "canopy" for parachute); the README's nudity command uses
      "clothed" (and builds its target captions by replacing it with "nudity"), its parachute command "airplane".
    - One VAE posterior sample per anchor image, drawn once, flips on the latents, batches drawn with
      replacement (as AbConcept here); x0 is computed for epsilon-predicting models; the discriminator runs
      under autocast on GPU.
    - ``adv_weight`` scales L_adv (1 in the reference); constant learning rates (the reference's default).

Toy world (conf/preset/toy_doco*.yaml): with the paper's 1-block-at-8x8 PatchGAN the discriminator stays
near chance (L_D 1.37 -> 1.35 in 300 warm-up steps; offline, 60-65% accuracy: the anchor and target x0
predictions differ by ~0.2 rms against ~0.9 of signal) and the UNet does not move the circle. The toy presets
use a 2-block discriminator (a 1x1 map on 8x8 latents), the reference's no-surgery loss with a heavier prior
term, and toy-scaled learning rates; toy_style passes the bar, toy_object does not (numbers in the presets).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from erasebench.api import Method, RunContext, Task, by_kind
from erasebench.erasure import PARAMETER_GROUPS, Shadow, Trainer, check_choice, detach_start_token, encode
from erasebench.erasure import qualified, select_parameters
from erasebench.errors import ConfigError, ErasebenchError
from erasebench.methods.abconcept import DEFAULT_ANCHOR, AbConcept, target_caption
from erasebench.registry import register_method


class PatchDiscriminator(nn.Module):
    """The reference's PatchGAN: stride-2 4x4 conv blocks (BatchNorm after the first), LeakyReLU 0.2, and a
    last 4x4 conv to one logit per patch. Input: [B, 4, H, W] latents; output: [B, 1, h, w] logits."""

    def __init__(self, in_channels: int = 4, blocks: int = 4, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(blocks):
            out = width * 2 ** i
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def auto_blocks(latent_size: int) -> int:
    """The most stride-2 blocks (1..4) that leave at least a 4x4 map (4 for SD's 64x64 latents)."""
    return max(1, min(4, int(math.log2(max(latent_size, 1) / 4)))) if latent_size >= 8 else 1


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = BCE(D(real), 0) + BCE(D(fake), 1), each a mean over the patch map (the reference's labels)."""
    r, f = disc(real.detach().float()), disc(fake.detach().float())
    return (F.binary_cross_entropy_with_logits(r, torch.zeros_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.ones_like(f)))


def generator_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """L_adv = BCE(D(fake), 0): the target prompt's output should look like the anchor's."""
    f = disc(fake.float())
    return F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))


def predict_x0(eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
               clip: float | None = None) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (DDPM ``pred_original_sample``, clamped if ``clip``)."""
    abar = alphas_cumprod.to(x_t.device)[t].float().view(-1, 1, 1, 1)
    x0 = (x_t.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()
    return x0.clamp(-clip, clip) if clip else x0


def clip_total_norm(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale a set of gradients to total norm <= ``max_norm`` (``clip_grad_norm_``'s rule)."""
    if not max_norm:
        return list(grads)
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * scale for g in grads]


def adjust_gradient(grads: Sequence[torch.Tensor], preserve: Sequence[torch.Tensor], lam: float = 1.0,
                    mode: str = "reference", eps: float = 1e-8) -> list[torch.Tensor]:
    """The concept-preserving gradient, per tensor: where g conflicts with the preservation gradient g_p
    (cos < 0), ``project`` removes lam x its component along g_p (g - lam <g, g_p^> g_p^); ``reference``
    subtracts lam x cos x g_p^ as the authors' code does. Non-conflicting tensors are returned unchanged."""
    check_choice("mode", mode, ("reference", "project"))
    out = []
    for g, p in zip(grads, preserve, strict=True):
        p_hat = p / (torch.linalg.norm(p) + eps)
        cos = torch.dot((g / (torch.linalg.norm(g) + eps)).flatten(), p_hat.flatten())
        if cos < 0:
            coef = cos if mode == "reference" else torch.dot(g.flatten(), p_hat.flatten())
            g = g - lam * coef * p_hat
        out.append(g)
    return out


def doco_caption(anchor_caption: str, anchor: str, target: str, kind: str, rng: random.Random) -> str:
    """The target caption as DoCo's ``utils.py`` (~244-268) builds it: styles and objects as AbConcept's;
    nudity and other harms "{c*}, {p}" 1 time in 3, "in {c*}'s style, {p}" 2 times in 3."""
    if kind in ("style", "object"):
        return target_caption(anchor_caption, anchor, target, kind, rng)
    prefix = f"in {target}'s style, {anchor_caption}"
    return rng.choice([f"{target}, {anchor_caption}", prefix, prefix])


@register_method("doco")
class DoCo(Method):
    """Align the target prompt's output domain with the anchor's adversarially, with gradient surgery."""

    display_name = "DoCo"

    smoke_settings = {"steps": 3, "warm_up": 1, "num_anchor_images": 4, "batch_size": 2}

    @dataclass
    class Config:
        """DoCo settings; defaults are the paper's / the authors' README (see the module docstring).

        Attributes:
            parameter_group: Trained tensors, a group of erasebench.erasure.PARAMETER_GROUPS.
            steps: Iterations in all (the discriminator steps in every one).
            warm_up: The UNet trains in the iterations after iteration ``warm_up`` (0-based; the reference's
                ``global_step > warm_up``), so ``warm_up + 1`` are discriminator-only.
            lr: UNet AdamW learning rate (README: 6e-6 x batch 8).
            disc_lr: Discriminator Adam learning rate (betas 0.5, 0.999); 0 = the README's for the task's kind
                (5e-4 for styles, 1e-4 otherwise).
            disc_blocks: Stride-2 blocks of the PatchGAN; 0 = auto from the latent size (4 on SD).
            batch_size: Anchor images per step (plus as many prior-preservation images).
            surgery: ``reference`` (authors' adjust_gradient), ``project`` (exact projection), ``off``.
            surgery_lambda: lambda of the gradient surgery.
            adv_weight: Weight of the generator's adversarial loss.
            prior_loss_weight: Weight of L_p when ``surgery`` is off (the reference adds 0.1 x this x L_p).
            num_anchor_images: Anchor images generated by the original model.
            hflip: Random horizontal flips of the anchor images.
            weight_decay: AdamW weight decay.
            clip_grad: Gradient-norm clip (applied to each gradient before the surgery).
            anchor: Anchor concept text; empty = the task's anchor, else a default per kind.
            anchor_prompts: Anchor captions (``{anchor}`` is filled in); empty = the task's, else AbConcept's.
            detach_start_token: Train with CustomDiffusion's attention rule, as the reference (no gradient through
                the start token's cross-attention key/value; erasebench.erasure.detach_start_token).
        """

        parameter_group: str = "xattn_kv"
        steps: int = 2000
        warm_up: int = 1000
        lr: float = 4.8e-5
        disc_lr: float = 0.0
        disc_blocks: int = 0
        batch_size: int = 8
        surgery: str = "reference"
        surgery_lambda: float = 1.0
        adv_weight: float = 1.0
        prior_loss_weight: float = 1.0
        num_anchor_images: int = 1000
        hflip: bool = True
        weight_decay: float = 1e-2
        clip_grad: float = 1.0
        anchor: str = ""
        anchor_prompts: list[str] = field(default_factory=list)
        detach_start_token: bool = True

        def __post_init__(self) -> None:
            check_choice("surgery", self.surgery, ("reference", "project", "off"))
            check_choice("parameter_group", self.parameter_group, tuple(PARAMETER_GROUPS))
            if not 0 <= self.warm_up <= self.steps:
                raise ConfigError(f"warm_up must lie in 0..steps ({self.steps}), not {self.warm_up}.")

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The UNet tensors of ``parameter_group``."""
        return qualified("unet", select_parameters(pipe.unet, self.config.parameter_group))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Render anchor images, warm the discriminator up, then train k/v adversarially with surgery."""
        from diffusers import DDPMScheduler

        c = self.config
        anchor = c.anchor or task.anchor or by_kind(DEFAULT_ANCHOR, task.kind, "object")
        helper = AbConcept(AbConcept.Config(num_anchor_images=c.num_anchor_images,
                                            anchor_prompts=list(c.anchor_prompts)))
        latents, captions = helper._anchor_latents(pipe, task, run, anchor)
        unet = pipe.unet
        params = select_parameters(unet, c.parameter_group)
        frozen = Shadow(params)
        sched = DDPMScheduler.from_config(pipe.scheduler.config)
        abar = sched.alphas_cumprod
        clip_x0 = sched.config.clip_sample_range if sched.config.clip_sample else None
        rng, gen = random.Random(run.seed), torch.Generator().manual_seed(run.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            blocks = c.disc_blocks or auto_blocks(latents.shape[-1])
            disc = PatchDiscriminator(latents.shape[1], blocks).to(run.device)
        self.disc = disc
        self.disc_lr = c.disc_lr or (5e-4 if task.kind == "style" else 1e-4)
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.disc_lr, betas=(0.5, 0.999))
        trainer = Trainer(params, "adamw", c.lr, c.steps, desc=f"doco-{c.surgery}", betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=c.weight_decay)
        plist = list(params.values())

        def noisy(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x0 = latents[idx]
            if c.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x0 = torch.where(flip.view(-1, 1, 1, 1).to(x0.device), x0.flip(-1), x0)
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen).to(run.device)
            return sched.add_noise(x0, noise, t), noise, t

        self.losses: list[dict[str, float]] = []
        for step in range(c.steps):
            train_g = step > c.warm_up
            idx = [rng.randrange(len(captions)) for _ in range(c.batch_size)]
            p_anchor = [captions[i] for i in idx]
            p_target = [doco_caption(p, anchor, task.concept_text, task.kind, rng) for p in p_anchor]
            x_t, _, t = noisy(idx)
            log: dict[str, float] = {}
            with trainer.autocast, detach_start_token(unet, c.detach_start_token):
                with torch.no_grad(), frozen.swap():
                    real = predict_x0(unet(x_t, t, encoder_hidden_states=encode(pipe, p_anchor)).sample, x_t, t,
                                      abar, clip_x0)
                grad_ctx = contextlib.nullcontext() if train_g else torch.no_grad()
                with grad_ctx:
                    fake = predict_x0(unet(x_t, t, encoder_hidden_states=encode(pipe, p_target)).sample, x_t, t,
                                      abar, clip_x0)
                if train_g:
                    prior_idx = [rng.randrange(len(captions)) for _ in range(c.batch_size)]
                    xp_t, noise_p, tp = noisy(prior_idx)
                    pred_p = unet(xp_t, tp, encoder_hidden_states=encode(pipe, [captions[i] for i in prior_idx]))
                    loss_p = F.mse_loss(pred_p.sample.float(), noise_p.float())
                    loss_adv = c.adv_weight * generator_loss(disc, fake)
                    if c.surgery == "off":
                        grads = torch.autograd.grad(loss_adv + 0.1 * c.prior_loss_weight * loss_p, plist)
                        grads = clip_total_norm(grads, c.clip_grad)
                    else:
                        g_p = clip_total_norm(torch.autograd.grad(loss_p, plist, retain_graph=True), c.clip_grad)
                        g_a = clip_total_norm(torch.autograd.grad(loss_adv, plist), c.clip_grad)
                        grads = adjust_gradient(g_a, g_p, c.surgery_lambda, c.surgery)
                    log.update(adv=float(loss_adv.detach()), prior=float(loss_p.detach()))
                    if not all(math.isfinite(v) for v in log.values()):
                        trainer.bar.close()
                        raise ErasebenchError(f"DoCo diverged at step {step}: {log}. Lower lr / disc_lr.")
                    trainer.opt.zero_grad(set_to_none=True)
                    for p, g in zip(plist, grads, strict=True):
                        p.grad = g.to(p.dtype)
                    trainer.opt.step()
                    trainer.opt.zero_grad(set_to_none=True)
                loss_d = discriminator_loss(disc, real, fake)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            log["disc"] = float(loss_d.detach())
            self.losses.append(log)
            trainer.bar.update(1)
            trainer.bar.set_postfix(**{k: f"{v:.3g}" for k, v in log.items()})
        trainer.finish()
        return pipe
