"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models
(Zhang, Chen, Jia, Zhang, Fan, Liu, Hong, Zhang, Liu; NeurIPS 2024).

Paper: arXiv 2405.15234. Reference code: github.com/OPTML-Group/AdvUnlearn at commit 9d23124
(``train-scripts/AdvUnlearn.py``, ``train-scripts/utils/attack_util.py`` (the attack), ``utils/util.py``,
``utils/prompt_dataset.py``; the README command for nudity holds the settings).

Bi-level adversarial training of the **text encoder** TE_phi (the UNet and the sampler stay the original):

    upper:  min_phi  L_u(phi, a*) + gamma * L_r(phi)
    lower:  a* = argmin_a  mean((eps(x_t, TE_phi([a ; c]), t) - eps(x_t, TE_0(c), t))^2)

    L_u = mean((eps(x_t, TE_phi([a* ; c]), t) - [eps(x_t, e_0, t) - eta (eps(x_t, e_c, t) - eps(x_t, e_0, t))])^2)
    L_r = mean((eps(x^r_t, TE_phi(c_r), t) - eps(x^r_t, TE_0(c_r), t))^2)         over a batch of retain prompts

with e_0 = TE_0(""), e_c = TE_0(c), eps the frozen UNet, [a ; c] the concept prompt with k soft tokens a placed
right after the start token (``prefix_k``) in the input word-embedding space. The attacker a* makes the
current encoder reproduce the original concept prediction; the ESD loss (L_u) then erases the concept under
that adversarial prompt, and L_r keeps the encoder's outputs for the retain prompts.

Each outer iteration (algorithm of the reference code):
    1. t_enc ~ U{0..49}; x_t from the first steps of a 50-step DDIM chain (eta 0, CFG 3, prompt e_c, original
       UNet and encoder), queried at t_ddpm ~ U[20 t_enc, 20 t_enc + 20) (the CompVis mapping of ESD);
    2. after ``warmup_iterations`` (200), the attack: k = 1 token, initialised as a random vocabulary
       embedding (``attack_init=random``, README), 30 Adam steps at lr 1e-3 against the current encoder (put in
       eval mode, frozen); every attack step draws a fresh x_t and t; no projection (no eps-ball). As in the
       code, the attack returns the tokens as they were *before* its last update (it builds the prompt, steps,
       and returns the prompt it built), and the ``latest`` warm start starts from those;
    3. L_u on the adversarial prompt (before warm-up ends: the plain concept prompt), L_r on 5 retain prompts
       drawn without replacement, the pool refilled whenever fewer than 5 are unseen, so every batch has 5
       (x^r_t by the same partial sampling with TE_0(c_r) and the same t); every retain prompt is used, also
       one that names the concept (as the code);
    4. one Adam step (lr 1e-5) on every encoder layer and the final layer norm (``text_encoder_full``,
       component ``all``; token and position embeddings frozen). With ``ffn`` / ``attn`` or ``train_layers``
       the final layer norm trains only with ``norm_layer`` (``--norm_layer``), as ``param_choices``.

Paper settings (the defaults): 1000 iterations, warm-up 200, gamma 0.3, retain batch 5 from
``coco_object_retain.csv`` (243 "a photo of {COCO object}" prompts, shipped in ``erasebench/data``),
eta 1, start guidance 3, DDIM 50, attack 1 prefix token / 30 steps / lr 1e-3.

The result is a plain text encoder of the same family: the harness saves the changed tensors (all
``text_encoder.*``; the UNet and VAE are untouched), which load into any pipeline of the same model with
``text_encoder.load_state_dict(tensors, strict=False)``.

Deviations and choices:
    - Multi-token concepts: the reference counts one token per whitespace word (``len(word.split())``), so a
      concept like "Van Gogh" (3 BPE tokens) is cut when the adversarial prompt is assembled. Here the
      prompt is tokenised for real and the k soft tokens are inserted after the start token; the sequence
      keeps 77 positions by dropping k trailing pad positions. The reference drops positions 1+n .. 1+n+k
      (n = its word count): the end token and the first pads, all the same id in SD's tokenizer (pad = end), so
      for a concept of n single-token words the two give the same ids and embeddings.
    - Gradient accumulation in the attack: the reference never calls ``zero_grad`` on the adversarial
      embedding, so Adam sees the running sum of all gradients of the attack. Off by default (the paper
      describes a plain Adam attack); ``attack_accumulate_grad: true`` reproduces the code.
    - ``attack_resample_xt`` (default true, as the code): a fresh x_t and t for every attack step. False
      reuses the outer iteration's x_t and t for all attack steps (cheaper; the speed-up noted in the specs).
    - ``retain_prompts``: ``coco_object`` (the paper's CSV) or ``task_preserve`` (the unique prompts of the
      task's preserve split; used for the toy world, where COCO words mean nothing; note that these are the
      evaluation's preserve prompts, so the preserve score is then measured on trained prompts).
    - Only the ``prefix_k`` placement and ``word_embd`` attack space are implemented (the README setting), and
      only the ``reg`` retain mode (the README setting); ``fast_at`` is not implemented.
    - ``train_layers`` > 0 trains the first N encoder layers with exact layer indices; the reference's
      ``startswith('encoder.layers.1')`` also matches layers 10 and 11.
    - The trained tensors are fp32 master weights (autocast on GPU); one generator seeded with the run seed
      draws every random quantity; the reference's ``--lr type=int`` bug does not exist here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from erasebench.api import Method, RunContext, Task
from erasebench.datafiles import resolve_data_path
from erasebench.erasure import Trainer, check_choice, concept_token_ids, ddim_scheduler, encode, esd_timesteps
from erasebench.erasure import partial_ddim_sample, qualified, text_states
from erasebench.errors import ErasebenchError
from erasebench.prompt_csv import read_prompt_csv
from erasebench.registry import register_method

#: Parameter-name patterns of the text-encoder groups (``text_model.`` prefix optional: transformers 4 and 5).
TE_GROUPS = {"full": r"encoder\.layers\.\d+\.", "ffn": r"encoder\.layers\.\d+\.mlp\.",
             "attn": r"encoder\.layers\.\d+\.self_attn\."}


def select_text_encoder_parameters(text_encoder: torch.nn.Module, group: str = "full", layers: int = 0,
                                   norm_layer: bool = False) -> dict[str, torch.nn.Parameter]:
    """The trained text-encoder tensors: encoder layers (all, or the first ``layers``) of ``group``, and the
    final layer norm as the reference's ``param_choices`` adds it: with every layer of every component
    (``text_encoder_full``, component ``all``), otherwise only with ``--norm_layer`` (``norm_layer``).

    Token and position embeddings are never selected.
    """
    with_norm = norm_layer or (group == "full" and not layers)
    chosen = {}
    for name, p in text_encoder.named_parameters():
        is_norm = with_norm and re.search(r"final_layer_norm\.", name) is not None
        if "embeddings." in name or not (is_norm or re.search(TE_GROUPS[group], name)):
            continue
        m = re.search(r"encoder\.layers\.(\d+)\.", name)
        if layers and m and int(m.group(1)) >= layers:
            continue
        chosen[name] = p
    if not chosen:
        raise ErasebenchError(f"Text-encoder group '{group}' selects nothing in {type(text_encoder).__name__}.")
    return chosen


def _batch(states: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The states in the latent's dtype, one per latent (a single prompt is repeated)."""
    states = states.to(z.dtype)
    return states.expand(z.shape[0], -1, -1) if states.shape[0] == 1 else states


def prefix_input_ids(tokenizer: Any, prompt: str, k: int) -> torch.Tensor:
    """[SOT, k placeholder slots, prompt tokens, EOT, pad...] at the tokenizer's max length ([1, L])."""
    length = tokenizer.model_max_length
    body = concept_token_ids(tokenizer, prompt)[: length - 2 - k]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + [tokenizer.eos_token_id] * k + body + [tokenizer.eos_token_id]
    return torch.tensor([ids + [pad] * (length - len(ids))])


def attack_loss(unet: Any, text_encoder: Any, ids: torch.Tensor, adv: torch.Tensor, z: torch.Tensor,
                t: torch.Tensor, emb_c: torch.Tensor) -> torch.Tensor:
    """The attacker's objective: the current encoder with the adversarial prompt against the original concept
    prediction, mean((eps(x_t, TE_phi([a ; c])) - eps(x_t, TE_0(c)))^2)."""
    with torch.no_grad():
        target = unet(z, t, encoder_hidden_states=emb_c).sample
    states = _batch(text_states(text_encoder, ids, adv), z)
    return F.mse_loss(unet(z, t, encoder_hidden_states=states).sample.float(), target.float())


def soft_prompt_attack(unet: Any, text_encoder: Any, ids: torch.Tensor, adv_init: torch.Tensor, emb_c: torch.Tensor,
                       draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                       accumulate: bool = False) -> tuple[torch.Tensor, list[float]]:
    """The lower level: Adam on k soft prompt tokens (input word-embedding space) for ``steps`` steps.

    Args:
        ids: Prompt ids with k placeholder slots after the start token (:func:`prefix_input_ids`).
        adv_init: The initial soft tokens, [1, k, D].
        emb_c: The original encoder's concept embedding (the attack target's condition).
        draw: Returns the (x_t, t) of each step.
        accumulate: Keep summing gradients across steps (the reference code: no ``zero_grad``).

    Returns:
        The adversarial tokens as the reference returns them: built before the *last* step's update (its loop
        forms the prompt embedding from the tokens, then steps, and returns that embedding), so the last update
        is never used; and the attack loss of every step (before its update).
    """
    was_training = text_encoder.training
    flags = {n: p.requires_grad for n, p in text_encoder.named_parameters()}
    text_encoder.eval().requires_grad_(False)
    adv = adv_init.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([adv], lr=lr)
    losses = []
    try:
        for _ in range(steps):
            z, t = draw()
            loss = attack_loss(unet, text_encoder, ids, adv, z, t, emb_c)
            (grad,) = torch.autograd.grad(loss, adv)
            adv.grad = grad if not accumulate or adv.grad is None else adv.grad + grad
            used = adv.detach().clone()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        text_encoder.train(was_training)
        for n, p in text_encoder.named_parameters():
            p.requires_grad_(flags[n])
    return (used if steps else adv.detach()), losses


def unlearn_loss(unet: Any, text_encoder: Any, ids: torch.Tensor, adv: torch.Tensor | None, z: torch.Tensor,
                 t: torch.Tensor, emb_0: torch.Tensor, emb_c: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """L_u: ESD's negatively guided target for the (adversarial) concept prompt through the trained encoder."""
    with torch.no_grad():
        e_0 = unet(z, t, encoder_hidden_states=emb_0).sample
        e_c = unet(z, t, encoder_hidden_states=emb_c).sample
    pred = unet(z, t, encoder_hidden_states=_batch(text_states(text_encoder, ids, adv), z)).sample
    return F.mse_loss(pred.float(), (e_0 - negative_guidance * (e_c - e_0)).float())


def retain_loss(unet: Any, text_encoder: Any, ids: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                emb_orig: torch.Tensor) -> torch.Tensor:
    """L_r: the trained encoder's prediction for retain prompts against the original encoder's."""
    with torch.no_grad():
        target = unet(z, t, encoder_hidden_states=emb_orig).sample
    pred = unet(z, t, encoder_hidden_states=_batch(text_states(text_encoder, ids), z)).sample
    return F.mse_loss(pred.float(), target.float())


def load_retain_prompts(source: str, task: Task,
                        data_path: Callable[[str], Path] = resolve_data_path) -> list[str]:
    """Retain prompts: the paper's COCO-object CSV (found through ``data_path``), or the task's preserve-split
    prompts. None is dropped for naming the concept (neither does the reference)."""
    if source == "coco_object":
        prompts = [row["prompt"] for row in read_prompt_csv(data_path("coco_object_retain.csv"))]
    else:
        prompts = list(dict.fromkeys(item.prompt for item in task.splits.get("preserve", ())))
    if not prompts:
        raise ErasebenchError(f"No retain prompts from '{source}' for task '{task.name}'.")
    return prompts


@register_method("advunlearn")
class AdvUnlearn(Method):
    """Adversarially train the text encoder so that no soft prompt brings the concept back."""

    display_name = "AdvUnlearn"

    smoke_settings = {"iterations": 3, "warmup_iterations": 1, "attack_steps": 2, "ddim_steps": 4, "retain_batch": 2}

    @dataclass
    class Config:
        """AdvUnlearn settings; defaults are the README command at OPTML-Group/AdvUnlearn 9d23124.

        Attributes:
            iterations: Outer iterations (optimiser steps).
            warmup_iterations: Iterations of plain ESD on the encoder before the attack starts.
            lr: Adam learning rate of the encoder.
            train_group: ``full`` (every encoder layer + final layer norm; the paper), ``ffn`` or ``attn``.
            train_layers: 0 = all encoder layers; N = the first N layers only.
            norm_layer: Also train the final layer norm where the reference needs ``--norm_layer`` for it
                (``ffn``, ``attn`` or ``train_layers`` > 0; ``full`` always trains it).
            negative_guidance: eta of the ESD target.
            start_guidance: CFG scale of the partial DDIM sampling that makes x_t.
            ddim_steps: Length of that DDIM chain.
            t_mapping: ``compvis`` (the code) or ``consistent`` (see erasebench.erasure.esd_timesteps).
            retain_loss_weight: gamma.
            retain_batch: Retain prompts per iteration.
            retain_prompts: ``coco_object`` (the paper's CSV) or ``task_preserve`` (the task's preserve prompts).
            adv_tokens: k, soft prompt tokens (prefix).
            attack_steps: Attack steps per outer iteration.
            attack_lr: Adam learning rate of the attack.
            attack_init: ``random`` (random vocabulary embeddings; README) or ``latest`` (warm start).
            attack_every: Refresh the adversarial prompt every N iterations (1 in the paper).
            attack_accumulate_grad: Reproduce the code's missing ``zero_grad`` in the attack.
            attack_resample_xt: A fresh x_t and t for every attack step (the code) instead of the outer one.
            prompt: The text to erase; empty means the task's concept text.
        """

        iterations: int = 1000
        warmup_iterations: int = 200
        lr: float = 1e-5
        train_group: str = "full"
        train_layers: int = 0
        norm_layer: bool = False
        negative_guidance: float = 1.0
        start_guidance: float = 3.0
        ddim_steps: int = 50
        t_mapping: str = "compvis"
        retain_loss_weight: float = 0.3
        retain_batch: int = 5
        retain_prompts: str = "coco_object"
        adv_tokens: int = 1
        attack_steps: int = 30
        attack_lr: float = 1e-3
        attack_init: str = "random"
        attack_every: int = 1
        attack_accumulate_grad: bool = False
        attack_resample_xt: bool = True
        prompt: str = ""

        def __post_init__(self) -> None:
            check_choice("train_group", self.train_group, tuple(TE_GROUPS))
            check_choice("t_mapping", self.t_mapping, ("compvis", "consistent"))
            check_choice("retain_prompts", self.retain_prompts, ("coco_object", "task_preserve"))
            check_choice("attack_init", self.attack_init, ("random", "latest"))

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The text-encoder tensors of ``train_group`` / ``train_layers`` / ``norm_layer``."""
        c = self.config
        return qualified("text_encoder", select_text_encoder_parameters(pipe.text_encoder, c.train_group,
                                                                        c.train_layers, c.norm_layer))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Train and return ``pipe`` with the adversarially unlearned text encoder."""
        c = self.config
        unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
        unet.requires_grad_(False)
        concept = c.prompt or task.erase_text()
        retain = load_retain_prompts(c.retain_prompts, task, run.data_path)
        # Everything the original encoder gives, computed before it changes.
        emb_0, emb_c = encode(pipe, [""]), encode(pipe, [concept])
        emb_retain = torch.cat([encode(pipe, retain[i:i + 64]) for i in range(0, len(retain), 64)])
        plain_ids = prefix_input_ids(tok, concept, 0)
        adv_ids = prefix_input_ids(tok, concept, c.adv_tokens)
        retain_ids = tok(retain, padding="max_length", max_length=tok.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
        params = select_text_encoder_parameters(te, c.train_group, c.train_layers, c.norm_layer)
        te.requires_grad_(False)
        self.resolved = {"concept_tokens": len(concept_token_ids(tok, concept)), "retain_prompt_count": len(retain),
                         "trained_tensors": len(params), "trained_parameters": sum(p.numel() for p in params.values())}
        sched = ddim_scheduler(pipe, c.ddim_steps)
        gen = torch.Generator().manual_seed(run.seed)
        size = unet.config.sample_size
        shape = (unet.config.in_channels, size, size)
        vocab = te.get_input_embeddings().weight
        trainer = Trainer(params, "adam", c.lr, c.iterations, desc="advunlearn")

        def draw(cond: torch.Tensor, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
            run_steps, t_ddpm = esd_timesteps(c.ddim_steps, c.t_mapping, gen)
            start = torch.randn((batch, *shape), generator=gen).to(run.device, unet.dtype)
            with trainer.autocast:
                z, t_next = partial_ddim_sample(unet, sched, start, cond, emb_0.expand(batch, -1, -1),
                                                c.start_guidance, run_steps)
            return z, torch.tensor([t_ddpm if t_ddpm >= 0 else t_next] * batch, device=run.device), run_steps

        adv: torch.Tensor | None = None
        order: list[int] = []
        self.losses: list[float] = []
        self.attack_losses: list[list[float]] = []
        for it in range(c.iterations):
            z, t, run_steps = draw(emb_c)
            if it >= c.warmup_iterations and (adv is None or (it - c.warmup_iterations) % c.attack_every == 0):
                if adv is None or c.attack_init == "random":
                    rows = torch.randint(vocab.shape[0], (c.adv_tokens,), generator=gen).to(vocab.device)
                    adv = vocab[rows].detach().float().unsqueeze(0)
                fixed = (z, t)
                with trainer.autocast:
                    adv, att = soft_prompt_attack(unet, te, adv_ids, adv, emb_c,
                                                  (lambda: draw(emb_c)[:2]) if c.attack_resample_xt else lambda f=fixed: f,
                                                  c.attack_steps, c.attack_lr, c.attack_accumulate_grad)
                self.attack_losses.append(att)
            if len(order) < c.retain_batch:  # the reference resets its pool when fewer than a batch are unseen
                order = torch.randperm(len(retain), generator=gen).tolist()
            idx, order = order[: c.retain_batch], order[c.retain_batch:]
            # Retain x_t: the same partial sampling with the original retain embeddings, the same t.
            start_r = torch.randn((len(idx), *shape), generator=gen).to(run.device, unet.dtype)
            with trainer.autocast:
                z_r, _ = partial_ddim_sample(unet, sched, start_r, emb_retain[idx], emb_0.expand(len(idx), -1, -1),
                                             c.start_guidance, run_steps)
                ids = adv_ids if adv is not None else plain_ids
                loss = unlearn_loss(unet, te, ids, adv, z, t, emb_0, emb_c, c.negative_guidance)
                loss = loss + c.retain_loss_weight * retain_loss(unet, te, retain_ids[idx], z_r,
                                                                 t[:1].expand(len(idx)), emb_retain[idx])
            self.losses.append(trainer.step(loss))
        trainer.finish()
        self.adversarial_tokens = adv
        return pipe
