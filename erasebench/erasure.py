"""Pieces several erasure methods share, written once.

- :func:`select_parameters`: the trained tensors, by name pattern (ESD-x, ESD-u, ...).
- :class:`Shadow`: the original model's prediction (or an EMA teacher's) without a second UNet in memory:
  other values of the trained tensors are swapped in for a forward pass and swapped out again.
- :func:`detach_start_token`: CustomDiffusion's cross-attention gradient rule (AbConcept, DoCo).
- :func:`encode`: prompt embeddings as SD computes them (77 tokens, ``last_hidden_state``).
- :func:`partial_ddim_sample` and :func:`esd_timesteps`: x_t made by running the first steps of a
  classifier-free-guided DDIM chain, and the DDPM timestep the model is queried at (CompVis-faithful or
  consistent).
- :class:`Trainer`: fp32 master weights for the trained tensors, autocast on GPU, a progress bar with the
  loss, and a clear stop on a NaN or exploding loss.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from erasebench.errors import ConfigError, ErasebenchError

#: Trained-parameter groups by name, in diffusers' UNet naming (see method-specs §0.1 and ESD §1.3).
PARAMETER_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (include patterns, exclude patterns); a parameter is trained if it matches any include and no exclude
    "xattn": ((r"attn2\.",), ()),
    "xattn_kv": ((r"attn2\.to_[kv]\.",), ()),
    "noxattn": ((r".",), (r"attn2\.", r"^time_embedding\.", r"^conv_norm_out\.", r"^conv_out\.")),
    "selfattn": ((r"attn1\.",), ()),
    "attn": ((r"attn[12]\.to_(q|k|v|out)",), ()),
    "full": ((r".",), ()),
}


def check_choice(key: str, value: str, options: Sequence[str]) -> None:
    """Raise a :class:`~erasebench.errors.ConfigError` naming ``key`` if ``value`` is not an option."""
    if value not in options:
        raise ConfigError(f"Setting '{key}' must be one of {', '.join(options)}, not '{value}'.")


def select_parameters(module: torch.nn.Module, group: str,
                      groups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
                      ) -> dict[str, torch.nn.Parameter]:
    """The parameters of ``module`` in a named group of ``groups`` (default :data:`PARAMETER_GROUPS`)."""
    groups = PARAMETER_GROUPS if groups is None else groups
    if group not in groups:
        raise ErasebenchError(f"Unknown parameter group '{group}'. Valid: {', '.join(groups)}.")
    include, exclude = groups[group]
    chosen = {n: p for n, p in module.named_parameters()
              if any(re.search(i, n) for i in include) and not any(re.search(e, n) for e in exclude)}
    if not chosen:
        raise ErasebenchError(f"Parameter group '{group}' selects nothing in {type(module).__name__}.")
    return chosen


def qualified(component: str, params: dict[str, Any]) -> set[str]:
    """``component.name`` for each name of ``params`` (a method's :meth:`~erasebench.api.Method.trained_tensors`)."""
    return {f"{component}.{n}" for n in params}


class Shadow:
    """A second set of values for the trained tensors, swapped in on demand.

    Used as the frozen original (``Shadow(params)`` right after selection: ``with shadow.swap(): unet(...)``
    runs the original model) and as an EMA teacher (:meth:`update_ema` after each step). Only the trained
    tensors are copied, so ESD-x on SD keeps ~44M extra floats instead of a second 860M-parameter UNet.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.values = {n: p.detach().clone().float() for n, p in params.items()}

    @contextlib.contextmanager
    def swap(self) -> Iterator[None]:
        """Run the block with the shadow values in place of the trained ones."""
        current = {n: p.data for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.data = self.values[n].to(dtype=current[n].dtype)
            yield
        finally:
            for n, p in self.params.items():
                p.data = current[n]

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """shadow <- decay * shadow + (1 - decay) * trained."""
        for n, p in self.params.items():
            self.values[n].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Make the shadow values the model's (e.g. keep the EMA teacher as the result)."""
        for n, p in self.params.items():
            p.data = self.values[n].to(dtype=p.dtype).clone()


@contextlib.contextmanager
def detach_start_token(unet: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Stop the gradient through the start-of-text token's cross-attention key and value.

    CustomDiffusion's attention processor, which AbConcept and DoCo train with, computes
    ``key = d * key + (1 - d) * key.detach()`` with d = 0 at token 0 (the same for the value): the forward pass
    is unchanged, but the [SoT] position, identical in every prompt, gets no gradient. Done here with forward
    hooks on every ``attn2.to_k`` / ``attn2.to_v``, so it works with any attention processor.
    """
    def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)

    handles = [m.register_forward_hook(hook) for n, m in unet.named_modules()
               if enabled and re.search(r"attn2\.to_[kv]$", n)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def encode(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP ``last_hidden_state`` of ``prompts``, padded to the tokenizer's max length as in SD."""
    tok = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A DDIM scheduler on the model's noise schedule, set to ``steps`` steps (SD's leading spacing)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    return sched


def esd_timesteps(ddim_steps: int, mapping: str, generator: torch.Generator) -> tuple[slice, int]:
    """Draw which DDIM steps to run and the DDPM timestep to query, as ESD does.

    Args:
        ddim_steps: Length n of the DDIM chain (50 in every paper).
        mapping: ``"compvis"`` reproduces the original code. t_enc ~ U{0..n-1}; the CompVis sampler is
            called with its default ``t_start=-1``, which slices the *first* timestep off the chain (981 of
            [981 ... 1] for n = 50), and its loop breaks after ``n - t_enc`` steps (all n - 1 when t_enc is 0
            or 1); the model is queried at t ~ U[round(1000 t_enc / n), round(1000 (t_enc + 1) / n)) (the
            latent is about two DDIM steps less noisy than t says). ``"consistent"`` runs k ~ U{0..n-1} steps
            of the full chain and queries at the DDIM timestep the latent is at (ESD's diffusers code).
        generator: Source of randomness.

    Returns:
        (which steps of ``sched.timesteps`` to run, for :func:`partial_ddim_sample`; the DDPM timestep to
        query, -1 meaning "the chain's next timestep").
    """
    t_enc = int(torch.randint(ddim_steps, (1,), generator=generator))
    if mapping == "compvis":
        lo, hi = round(t_enc / ddim_steps * 1000), round((t_enc + 1) / ddim_steps * 1000)
        t_ddpm = int(torch.randint(lo, hi, (1,), generator=generator))
        return slice(1, 1 + min(ddim_steps - t_enc, ddim_steps - 1)), t_ddpm
    if mapping == "consistent":
        return slice(0, t_enc), -1
    raise ErasebenchError(f"t_mapping must be 'compvis' or 'consistent', not '{mapping}'")


@torch.no_grad()
def partial_ddim_sample(unet: Any, sched: Any, latent: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                        guidance: float, run_steps: int | slice) -> tuple[torch.Tensor, int]:
    """Run part of a CFG DDIM chain (eta 0) from ``latent``, treated as the noise at its first timestep.

    Args:
        run_steps: How many steps from the start of ``sched.timesteps`` (an int), or which ones (a slice of
            it, as :func:`esd_timesteps` draws).

    Returns:
        The latent after those steps and the timestep of the chain it now sits at (the next one to denoise;
        0 when the chain ran to the end).
    """
    steps = run_steps if isinstance(run_steps, slice) else slice(0, run_steps)
    x = latent * sched.init_noise_sigma
    timesteps = sched.timesteps
    for t in timesteps[steps]:
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    stop = steps.indices(len(timesteps))[1]
    nxt = int(timesteps[stop]) if stop < len(timesteps) else 0
    return x, nxt


class Trainer:
    """Optimise a set of tensors of a half-precision-or-fp32 model safely.

    The trained tensors are kept in fp32 (pure fp16/bf16 Adam at lr 1e-5 loses most updates) and cast back
    to the model's dtype by :meth:`finish`; in a half-precision model the activations run under autocast
    (on CUDA, and on CPU, where bf16 runs check dtype handling without a GPU).

    Args:
        params: The trained parameters (everything else should have ``requires_grad=False``).
        optimizer: ``"adam"`` or ``"adamw"``.
        lr: Learning rate.
        steps: Number of steps (for the progress bar).
        desc: Progress bar label.
        clip_grad: Max gradient norm, or ``None``.
        loss_scale: Divergence stops the run when the loss exceeds 1e4 x max(first loss, ``loss_scale``).
            Methods whose loss starts at ~0 by construction (the trained weights equal the original ones)
            pass the loss size they expect, so the check does not fire on normal training.
        **opt_kwargs: Passed to the optimiser (betas, weight_decay, ...).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], optimizer: str, lr: float, steps: int,
                 desc: str = "erase", clip_grad: float | None = None, loss_scale: float = 1e-8,
                 **opt_kwargs: Any) -> None:
        self.params, self.clip_grad, self.loss_scale = params, clip_grad, loss_scale
        self.dtype = next(iter(params.values())).dtype
        half = self.dtype in (torch.float16, torch.bfloat16)
        for p in params.values():
            p.data = p.data.float() if half else p.data
            p.requires_grad_(True)
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
        self.opt = cls(list(params.values()), lr=lr, **opt_kwargs)
        self.bar = tqdm(total=steps, desc=desc)
        self.first_loss: float | None = None
        self.device_type = next(iter(params.values())).device.type

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for the model's dtype (a no-op in fp32/fp64 models).

        The fp32 master tensors sit inside a half-precision model: autocast runs its matmuls and convolutions in
        the model's dtype (CUDA, and CPU for bf16 checks without a GPU). A new object per ``with``: one
        ``torch.autocast`` entered twice, nested (an attack that resamples x_t under it), restores the wrong
        state on exit and leaves autocast on for everything after.
        """
        if self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast(self.device_type, dtype=self.dtype)
        return contextlib.nullcontext()

    def step(self, loss: torch.Tensor) -> float:
        """Backpropagate ``loss``, check it, and update the parameters."""
        value = float(loss.detach())
        if self.first_loss is None:
            self.first_loss = value
        if not math.isfinite(value) or value > 1e4 * max(self.first_loss, self.loss_scale):
            self.bar.close()
            raise ErasebenchError(
                f"Training diverged at step {self.bar.n}: loss {value:.4g} (first loss {self.first_loss:.4g}). "
                "Lower the learning rate or check the method's settings."
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.clip_grad)
        self.opt.step()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{value:.4g}")
        return value

    def finish(self) -> None:
        """Stop training: drop gradients and cast the trained tensors back to the model's dtype."""
        self.bar.close()
        for p in self.params.values():
            p.requires_grad_(False)
            p.grad = None
            p.data = p.data.to(self.dtype)
        self.opt.state.clear()


# -- text-side helpers (AdvUnlearn soft prompts, AdvAnchor embedding perturbation) ------------------------------

@contextlib.contextmanager
def token_embedding_override(text_encoder: Any, start: int, values: torch.Tensor,
                             mode: str = "replace") -> Iterator[None]:
    """Within the block, the text encoder's input word embeddings at ``start:start+n`` are replaced by (or,
    with ``mode="add"``, have added to them) ``values`` of shape [1 or B, n, D], with gradients to ``values``.

    A forward hook on the token-embedding layer, so the encoder's own forward (position embeddings, causal
    mask, final layer norm) runs unchanged in any transformers version.
    """
    def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        n = values.shape[1]
        v = values.to(out.dtype).expand(out.shape[0], -1, -1)
        mid = v if mode == "replace" else out[:, start:start + n] + v
        return torch.cat([out[:, :start], mid, out[:, start + n:]], dim=1)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def text_states(text_encoder: Any, input_ids: torch.Tensor, adv: torch.Tensor | None = None,
                start: int = 1, mode: str = "replace") -> torch.Tensor:
    """``last_hidden_state`` of ``input_ids``, optionally with soft tokens ``adv`` at ``start`` (with gradients)."""
    ids = input_ids.to(text_encoder.device)
    if adv is None:
        return text_encoder(ids)[0]
    with token_embedding_override(text_encoder, start, adv, mode):
        return text_encoder(ids)[0]


def concept_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The real BPE token ids of ``text`` (no start/end tokens) -- not one token per word."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)
