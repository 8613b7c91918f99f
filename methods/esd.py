"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzynska, Fiotto-Kaufman, Bau; ICCV 2023).

Paper: arXiv 2303.07345. Reference code: github.com/rohitgandikota/erasing, the CompVis training script
``train-scripts/train-esd.py`` at commit a2189e9 (the paper's implementation); its diffusers port
``esd_sd.py`` at 25613d2 is available through the options below.

The erased model is fine-tuned so that, conditioned on the concept c, it predicts the noise the original
model would predict if guided *away* from c (negative classifier-free guidance with scale eta):

    target = eps*(x_t, "", t) - eta * (eps*(x_t, c, t) - eps*(x_t, "", t))     (eps*: the frozen original)
    loss   = mean((eps_theta(x_t, c, t) - target)^2)

Each iteration:
    1. draw t_enc ~ U{0..49} and a start noise z_T;
    2. run the first 50 - t_enc steps (49 when t_enc is 0 or 1) of a DDIM chain (eta 0, CFG scale
       ``start_guidance`` = 3, prompt c) with the model *being trained* (the paper code;
       ``sampler_model=frozen`` uses the original). As in the paper code, whose CompVis sampler is called
       with ``t_start=-1``, the chain is the 50-step one without its first timestep: [961 ... 1], so the start
       noise is taken as x_961 (:func:`erasebench.erasure.esd_timesteps`);
    3. query the models at t_ddpm ~ U[20 t_enc, 20 t_enc + 20) (``t_mapping=compvis``, faithful to the
       paper code, where the latent is about two DDIM steps less noisy than t says; ``consistent`` queries
       at the timestep the latent is actually at, as the diffusers port does);
    4. one Adam step on the loss above, batch 1.

Paper settings (the defaults): Adam, lr 1e-5, 1000 iterations, eta 1, start guidance 3, DDIM 50.
Trained parameters: ESD-x (``xattn``: every ``attn2`` tensor) for artist styles, ESD-u (``noxattn``: all
but ``attn2``, the time embedding and the output layers) for objects and nudity; ``train_method=auto``
picks by the task's kind.

Deviations from the reference code:
    - The start noise has the UNet's native latent size (64x64 for SD v1.4 at 512 px, as in the paper).
    - Trained tensors are fp32 master weights; on GPU the activations run under fp16/bf16 autocast (the
      paper code is fp32 throughout). There is no second UNet: the original's prediction swaps the saved
      original values of the trained tensors in (numerically the same as a frozen copy).
    - One generator seeded with the run seed draws t_enc, t_ddpm and the start noise, so runs repeat.
    - Multi-concept separators (``--seperator``) are not implemented: the concept text is one prompt.
    - The CompVis ``--lr`` type=int bug does not exist here (any lr can be set).

The diffusers port's options (``sampler_model=frozen``, ``t_mapping=consistent``, ``train_method=xattn_kv``
= its ``esd-x-strict``; its ``esd-x`` is ``xattn``) follow ``esd_sd.py``'s sampling and loss, not all of it:
    - It samples x_t with the pipeline's own scheduler (PNDM for SD v1.4, whose 50-step list has 51 entries,
      [981, 961, 961, 941, ..., 1]; it queries ``timesteps[k]``, so 961 twice as often and never 1); DDIM here.
    - Its defaults differ from the paper's, which stay the defaults here: 1024 px for SD v1.4 (128x128
      latents), 200 iterations, lr 5e-5, bf16 weights with bf16 Adam (set ``iterations`` / ``lr`` to compare).
Two of its conventions differ from the names here:
    - Its target is ``e_p - eta' (e_p - e_0)``, which is ``e_0 - (eta' - 1)(e_p - e_0)``: its ``negative_guidance``
      eta' is this eta + 1 (the port's default 2 is the paper's 1).
    - Its ``esd-u`` trains the Linear and Conv2d modules outside cross-attention (the time embedding and
      ``conv_out`` included, the norms excluded). ``noxattn`` here follows the CompVis rule instead (every
      tensor outside ``attn2``, the time embedding and the output layers: the paper's ESD-u).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from erasebench.api import Method, RunContext, Task
from erasebench.erasure import PARAMETER_GROUPS, Shadow, Trainer, check_choice, ddim_scheduler, encode, esd_timesteps
from erasebench.erasure import partial_ddim_sample, qualified, select_parameters
from erasebench.registry import register_method


def esd_loss(unet: Any, frozen: Shadow, z: torch.Tensor, t: torch.Tensor, emb_0: torch.Tensor, emb_p: torch.Tensor,
             negative_guidance: float) -> torch.Tensor:
    """ESD's loss at one (x_t, t): the trained prediction for c against the negatively guided original."""
    with torch.no_grad(), frozen.swap():
        e_0 = unet(z, t, encoder_hidden_states=emb_0).sample
        e_p = unet(z, t, encoder_hidden_states=emb_p).sample
    e_n = unet(z, t, encoder_hidden_states=emb_p).sample
    return F.mse_loss(e_n.float(), (e_0 - negative_guidance * (e_p - e_0)).float())


@contextlib.contextmanager
def _precision(pipe: Any, train_dtype: str) -> Iterator[None]:
    """Run the block with the UNet and text encoder in float64 (``train_dtype="float64"``), then cast back."""
    modules = (pipe.unet, pipe.text_encoder) if train_dtype == "float64" else ()
    dtypes = [m.dtype for m in modules]
    for m in modules:  # torch's .to: diffusers' override warns about fp32-only modules, of which SD has none
        torch.nn.Module.to(m, torch.float64)
    try:
        yield
    finally:
        for m, dtype in zip(modules, dtypes):
            torch.nn.Module.to(m, dtype)


@register_method("esd")
class ESD(Method):
    """Fine-tune the UNet toward negatively guided predictions for the concept."""

    display_name = "ESD"

    smoke_settings = {"iterations": 2, "ddim_steps": 4}

    @dataclass
    class Config:
        """ESD settings; defaults are the paper's (CompVis script a2189e9).

        Attributes:
            train_method: ``auto`` (xattn for styles, noxattn otherwise), or a group of
                :data:`erasebench.erasure.PARAMETER_GROUPS` (``xattn``, ``noxattn``, ``selfattn``, ``full``,
                ``xattn_kv`` = the diffusers port's ``esd-x-strict``).
            iterations: Optimiser steps (batch 1).
            lr: Adam learning rate.
            negative_guidance: eta.
            start_guidance: CFG scale of the partial DDIM sampling that makes x_t.
            ddim_steps: Length of that DDIM chain.
            sampler_model: ``trained`` (paper code) or ``frozen`` (diffusers port).
            t_mapping: ``compvis`` (paper code) or ``consistent`` (diffusers port); see the module docstring.
            prompt: The text to erase; empty means the task's (``task.erase_text()``).
            train_dtype: ``model`` (train in the model's dtype, fp32 master weights: the paper code's fp32) or
                ``float64``: the sampling chain, both predictions and Adam run in double precision and the
                UNet is cast back afterwards. A numerical option, not a method change: ESD's outcome on a
                small model is chaotic in float rounding (the trained model samples its own x_t), so fp32 CPU
                runs with 1, 2 or 4 threads end apart; in float64 they agree (the toy preset uses it).
        """

        train_method: str = "auto"
        iterations: int = 1000
        lr: float = 1e-5
        negative_guidance: float = 1.0
        start_guidance: float = 3.0
        ddim_steps: int = 50
        sampler_model: str = "trained"
        t_mapping: str = "compvis"
        prompt: str = ""
        train_dtype: str = "model"

        def __post_init__(self) -> None:
            check_choice("sampler_model", self.sampler_model, ("trained", "frozen"))
            check_choice("train_dtype", self.train_dtype, ("model", "float64"))
            check_choice("t_mapping", self.t_mapping, ("compvis", "consistent"))
            if self.train_method != "auto":
                check_choice("train_method", self.train_method, tuple(PARAMETER_GROUPS))

    def group(self, task: Task) -> str:
        """The trained group: ``train_method``, or for ``auto`` ESD-x on styles and ESD-u otherwise."""
        c = self.config
        return c.train_method if c.train_method != "auto" else ("xattn" if task.kind == "style" else "noxattn")

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The UNet tensors of :meth:`group`."""
        return qualified("unet", select_parameters(pipe.unet, self.group(task)))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Train and return ``pipe`` with the ESD-updated UNet."""
        with _precision(pipe, self.config.train_dtype):
            self._train(pipe, task, run, self.group(task))
        return pipe

    def _train(self, pipe: Any, task: Task, run: RunContext, group: str) -> None:
        c = self.config
        unet = pipe.unet
        params = select_parameters(unet, group)
        frozen = Shadow(params)
        emb_0, emb_p = encode(pipe, [""]), encode(pipe, [c.prompt or task.erase_text()])
        sched = ddim_scheduler(pipe, c.ddim_steps)
        gen = torch.Generator().manual_seed(run.seed)
        size = unet.config.sample_size
        shape = (1, unet.config.in_channels, size, size)
        trainer = Trainer(params, "adam", c.lr, c.iterations, desc=f"esd-{group}")
        self.losses: list[float] = []
        for _ in range(c.iterations):
            run_steps, t_ddpm = esd_timesteps(c.ddim_steps, c.t_mapping, gen)
            start = torch.randn(shape, generator=gen).to(run.device, unet.dtype)
            sampler = frozen.swap() if c.sampler_model == "frozen" else contextlib.nullcontext()
            with sampler, trainer.autocast:
                z, t_next = partial_ddim_sample(unet, sched, start, emb_p, emb_0, c.start_guidance, run_steps)
            t = torch.tensor([t_ddpm if t_ddpm >= 0 else t_next], device=run.device)
            with trainer.autocast:
                loss = esd_loss(unet, frozen, z, t, emb_0, emb_p, c.negative_guidance)
            self.losses.append(trainer.step(loss))
        trainer.finish()
