"""SDD: Safe self-Distillation of Diffusion models (Kim, Jung, Kim, Lee, Hwang; arXiv 2307.05977, 2023).

Reference code: github.com/nannullna/safe-diffusion at commit a2e820c (``train_sdd.py``; the defaults are its
argparse defaults, which ``run_sdd_nudity.sh`` keeps: it sets only the concept and seed 42).

The student is distilled, under the concept prompt c_s, toward its *own* unconditional prediction
(stop-gradient), on latents sampled by an EMA teacher of itself:

    loss = mean((eps_theta(z_t, c_s, t) - sg[eps_theta(z_t, "", t)])^2)
    after every step: theta_ema <- 0.999 theta_ema + 0.001 theta;  the EMA teacher is the result.

Each step:
    1. t_ddim ~ U{0..49}; from z_T ~ N(0, I) run t_ddim steps of a 50-step DDIM chain (eta 0, CFG 3,
       prompt c_s) with the EMA teacher, so z sits at DDIM timestep ``timesteps[t_ddim]``;
    2. query at t_ddpm ~ U[round((1 - (t_ddim + 1) / 50) 1000), round((1 - t_ddim / 50) 1000)), which matches
       the latent's noise level;
    3. one AdamW step (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay 1e-4, gradient norm clipped to 1),
       then the EMA update.

Paper settings (the defaults): 1500 steps, batch 1, cross-attention (``attn2``) only, EMA 0.999.

Deviations and choices:
    - Reference-code bug kept by default (``reproduce_t0_bug``): when t_ddim = 0 the sampling loop never
      breaks, so a fully denoised z_0 is queried at t in [980, 1000) (2% of steps). Set it false to query
      pure noise there instead.
    - The EMA is kept for the trained tensors only; the reference code averages every UNet parameter, but
      the untrained ones never change, so their average is themselves.
    - Trained tensors are fp32 master weights with autocast on GPU (the reference offers fp16 autocast).
    - One concept per run (``--concept_method iterative`` over one concept is the same).
    - The start noise has the UNet's native latent size (the reference hard-codes 64x64: the same for SD v1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from erasebench.api import Method, RunContext, Task
from erasebench.erasure import PARAMETER_GROUPS, Shadow, Trainer, check_choice, ddim_scheduler, encode
from erasebench.erasure import partial_ddim_sample, qualified, select_parameters
from erasebench.registry import register_method


#: SDD's ``--finetuning_method`` choices (``gather_parameters`` in train_sdd.py). Its ``noxattn`` differs from
#: ESD's: it keeps ``conv_norm_out`` trainable and drops every name containing ``time_embed``.
SDD_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": PARAMETER_GROUPS["full"],
    "selfattn": PARAMETER_GROUPS["selfattn"],
    "xattn": PARAMETER_GROUPS["xattn"],
    "noxattn": ((r".",), (r"^conv_out\.", r"time_embed", r"attn2")),
    "notime": ((r".",), (r"^conv_out\.", r"time_embed")),
}


def sdd_query_timestep(t_ddim: int, ddim_steps: int, generator: torch.Generator) -> int:
    """The DDPM timestep SDD queries for a latent ``t_ddim`` steps into the chain."""
    lo = round((1 - (t_ddim + 1) / ddim_steps) * 1000)
    hi = round((1 - t_ddim / ddim_steps) * 1000)
    return int(torch.randint(lo, hi, (1,), generator=generator))


def sdd_loss(unet: Any, z: torch.Tensor, t: torch.Tensor, emb_0: torch.Tensor, emb_s: torch.Tensor) -> torch.Tensor:
    """SDD's loss: the student's concept prediction against its own unconditional one (stop-gradient)."""
    with torch.no_grad():
        e_0 = unet(z, t, encoder_hidden_states=emb_0).sample
    e_s = unet(z, t, encoder_hidden_states=emb_s).sample
    return F.mse_loss(e_s.float(), e_0.float())


@register_method("sdd")
class SDD(Method):
    """Self-distil the concept-conditioned prediction toward the unconditional one; keep the EMA."""

    display_name = "SDD"

    smoke_settings = {"steps": 2, "ddim_steps": 4}

    @dataclass
    class Config:
        """SDD settings; defaults are train_sdd.py's at a2e820c (as ``run_sdd_nudity.sh`` runs it).

        Attributes:
            train_method: Parameter group, one of :data:`SDD_GROUPS` (the reference's ``full``, ``selfattn``,
                ``xattn`` (the paper's), ``noxattn``, ``notime``).
            steps: Optimiser steps (batch 1).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            ema_decay: Decay of the EMA teacher.
            guidance: CFG scale of the teacher's sampling.
            ddim_steps: Length of the DDIM chain.
            clip_grad: Gradient-norm clip.
            reproduce_t0_bug: Keep the reference code's t_ddim = 0 behaviour (see the module docstring).
            prompt: The text to erase; empty means the task's (``task.erase_text()``).
        """

        train_method: str = "xattn"
        steps: int = 1500
        lr: float = 1e-5
        weight_decay: float = 1e-4
        ema_decay: float = 0.999
        guidance: float = 3.0
        ddim_steps: int = 50
        clip_grad: float = 1.0
        reproduce_t0_bug: bool = True
        prompt: str = ""

        def __post_init__(self) -> None:
            check_choice("train_method", self.train_method, tuple(SDD_GROUPS))

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The UNet tensors of ``train_method`` (:data:`SDD_GROUPS`)."""
        return qualified("unet", select_parameters(pipe.unet, self.config.train_method, SDD_GROUPS))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Train and return ``pipe`` holding the EMA teacher's weights."""
        c = self.config
        unet = pipe.unet
        params = select_parameters(unet, c.train_method, SDD_GROUPS)
        teacher = Shadow(params)
        emb_0, emb_s = encode(pipe, [""]), encode(pipe, [c.prompt or task.erase_text()])
        sched = ddim_scheduler(pipe, c.ddim_steps)
        gen = torch.Generator().manual_seed(run.seed)
        size = unet.config.sample_size
        trainer = Trainer(params, "adamw", c.lr, c.steps, desc="sdd", clip_grad=c.clip_grad,
                          betas=(0.9, 0.999), eps=1e-8, weight_decay=c.weight_decay)
        self.losses: list[float] = []
        for _ in range(c.steps):
            t_ddim = int(torch.randint(c.ddim_steps, (1,), generator=gen))
            start = torch.randn((1, unet.config.in_channels, size, size), generator=gen).to(run.device, unet.dtype)
            run_steps = c.ddim_steps if (t_ddim == 0 and c.reproduce_t0_bug) else t_ddim
            with teacher.swap(), trainer.autocast:
                z, _ = partial_ddim_sample(unet, sched, start, emb_s, emb_0, c.guidance, run_steps)
            t = torch.tensor([sdd_query_timestep(t_ddim, c.ddim_steps, gen)], device=run.device)
            with trainer.autocast:
                loss = sdd_loss(unet, z, t, emb_0, emb_s)
            self.losses.append(trainer.step(loss))
            teacher.update_ema(c.ema_decay)
        trainer.finish()
        teacher.copy_to_params()  # the EMA teacher is the erased model (``--eval_with teacher``)
        return pipe
