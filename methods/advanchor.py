"""AdvAnchor: Enhancing Diffusion Model Unlearning with Adversarial Anchors (Zhao et al., arXiv 2501.00054).

Reference code: github.com/Mengnan-Zhao-Happy/AdvAnchor at commit 53514b4 (``train-scripts/
Ladv{1,2}ablation_op{1,2,3}.py``; README command ``Ladv1ablation_op1.py --lr 1e-5 --lr2 1e-4 --iter_break 50
--w_iter_break 30 --att_size 0 --ori_flag``).

An AbConcept-style erasure whose anchor is *adversarial*: a universal perturbation delta on the undesired
concept's embedding makes an anchor e_a = e(c) + delta that stays close to the concept in embedding space
but whose prediction has lost the concept's defining attributes. The UNet's cross-attention is fine-tuned
toward the anchor's prediction by the frozen original eps*:

    anchor:   while L_adv(delta) >= 0 and fewer than 30 steps:  delta <- Adam step on L_adv (lr 1e-4)
              L_adv1 = sim(eps*(z_t, e_a), eps*(z_t, c))                                  (prediction similarity)
              L_adv2 = sim(eps*(z_t, e_a) - eps*(z_t, g), eps*(z_t, c) - eps*(z_t, g))     (change vs. generic g)
    unlearn:  L = mean((eps_theta(z_t, c) - sg[eps*(z_t, e_a)])^2) + lambda mean((eps_theta(z_t, g) - eps*(z_t, g))^2)

The inner loop stops as soon as L_adv < 0: the anchor's (change of) prediction has turned past orthogonal
to the concept's. Training images are rendered by the original model from the concept prompt; each step
uses one: VAE latent z_0, t_enc ~ U{0..49}, t ~ U[20 t_enc, 20 t_enc + 20), z_t = q_sample(z_0, t).

Strategies (``strategy``):
    op1 alternating (the paper's main one): per image, the anchor loop (<= 30 steps, early stop), then one
        unlearning step on the same z_t; delta carries over between images (universal);
    op2 sequential: first the anchor loop over every image, then every unlearning step with delta fixed;
    op3 cyclical: 30 passes over the images with one delta step per image (only while L_adv > 0), then every
        unlearning step with delta fixed.
A fresh Adam for delta is created per image (the code); ``self.trace`` records the ("delta", i) and
("unet", i) events in order.

Paper settings (the defaults): Adam lr 1e-5 on every ``attn2`` tensor, 50 unlearning steps (batch 1), delta lr
1e-4, inner cap 30, delta initialised N(0, 1) x 1e-7, lambda = 10 (hard-coded in every script; the project
plan quoted lambda 20-50 from the paper, which the code does not match -- set ``lam`` to compare).

Choices where the code is ambiguous (options, recorded in the settings):
    - ``delta_space``: where delta is added. The embedder patch that the scripts call is missing from the
      repository; the paper says "text embeddings + adversarial perturbations". Default ``encoder_output``
      (added to the CLIP output states at the concept's token positions); ``token_input`` adds it to the
      input word embeddings instead.
    - ``delta_span``: which positions delta covers. Default ``concept`` (the concept's tokens, as the code's
      word positions). ``concept_to_end`` also covers every state after them ([EoT] and the padding), which
      a causal text encoder computes from the concept too; an option beyond the code, for encoders that
      carry the concept there (the toy's does, see UCE's toy finding).
    - ``similarity``: the code takes the unnormalised mean of the elementwise product (scaled by 1/(1+o),
      o = 1 with ``--ori_flag``); the paper's text speaks of similarity of predictions, read as cosine.
      Default ``cosine``; ``mean_product`` reproduces the code (both have the same sign, so the stopping
      rule is the same).
    - ``accumulate_grads``: the code calls no ``zero_grad`` in either loop (delta gradients accumulate within
      an image's anchor loop; UNet gradients accumulate over all 50 steps). Default false (the paper's plain
      Adam); true reproduces the code.

Deviations:
    - Prompt templates per task kind (``templates``: kind -> [concept prompt c, generic prompt g, anchor base
      prompt]); the code hard-codes the style ones ("{c} painting", "painting", "{c}'s painting") even for
      objects and nudity. Objects: "a photo of a {c}" / "a photo"; nudity: "{c}, a photo of a person" /
      "a photo of a person". delta covers the concept's real BPE tokens in the anchor base prompt (the
      code counts whitespace words from position 1).
    - Training images: ``steps`` images (the code's loop breaks at ``i == iter_break``, so it uses 51 for 50),
      rendered with the harness's sampler for the model from the concept prompt c and cached (the code
      renders up to 1000 images, LMS 100 steps, CFG 7.5, random seeds).
    - The attribute prompts (``--att_size``) are not implemented: the README command uses none.
    - The L1 distance to the original weights (printed, never added to the loss in the code) is omitted.
    - No second UNet: the original's predictions swap the saved attn2 values in. fp32 master weights, autocast
      on GPU; one generator seeded with the run seed draws every random quantity.
    - Precision: the code runs in fp32. The anchor e(c) + delta is formed in fp32 here, but with a half-precision
      UNet (``dtype: auto`` on CUDA) the cross-attention projections see it in fp16/bf16, where delta's
      1e-4-sized steps are below the resolution of values near 1 (about 1e-3): run AdvAnchor on GPU with
      ``model.dtype=float32`` to match the code (the CPU / toy runs are fp32).
    - Training images: the code's ``generate-data.py`` wraps the prompt in a list again on every loop, so only
      its first images use the bare concept name; here every image uses the concept prompt c.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from erasebench.api import Method, PromptItem, RunContext, Task, by_kind
from erasebench.erasure import Shadow, Trainer, check_choice, concept_token_ids, encode, esd_timesteps
from erasebench.erasure import qualified, select_parameters, text_states
from erasebench.registry import register_method

#: Per task kind: [concept prompt, generic prompt, anchor base prompt]; ``{concept}`` is the concept text.
DEFAULT_TEMPLATES = {
    "style": ["{concept} painting", "painting", "{concept}'s painting"],
    "object": ["a photo of a {concept}", "a photo", "a photo of a {concept}"],
    "nudity": ["{concept}, a photo of a person", "a photo of a person", "{concept}, a photo of a person"],
}


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Similarity of two predictions: cosine over all elements per sample, or the code's mean product.

    The code's is ``coeff[0] * mean(e_a * e_c) / (o + 1)`` with coeff[0] = 1 and o = 1 (``--ori_flag``, the
    README command): half the mean product.
    """
    if kind == "cosine":
        return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1).mean()
    return (a.float() * b.float()).mean() / 2


def adv_loss(unet: Any, z: torch.Tensor, t: torch.Tensor, emb_anchor: torch.Tensor, emb_c: torch.Tensor,
             emb_g: torch.Tensor, variant: str, sim: str) -> torch.Tensor:
    """L_adv1 (``adv1``) or L_adv2 (``adv2``) of the anchor; call with the original weights in place.

    Gradients flow to ``emb_anchor`` only.
    """
    e_a = unet(z, t, encoder_hidden_states=emb_anchor).sample
    with torch.no_grad():
        e_c = unet(z, t, encoder_hidden_states=emb_c).sample
        e_g = unet(z, t, encoder_hidden_states=emb_g).sample if variant == "adv2" else None
    if e_g is not None:
        return similarity(e_a - e_g, e_c - e_g, sim)
    return similarity(e_a, e_c, sim)


def unlearn_loss(unet: Any, frozen: Shadow, z: torch.Tensor, t: torch.Tensor, emb_c: torch.Tensor,
                 emb_anchor: torch.Tensor, emb_g: torch.Tensor, lam: float) -> torch.Tensor:
    """mean((eps_theta(c) - sg[eps*(anchor)])^2) + lam mean((eps_theta(g) - eps*(g))^2)."""
    with torch.no_grad(), frozen.swap():
        e_a = unet(z, t, encoder_hidden_states=emb_anchor).sample
        e_g = unet(z, t, encoder_hidden_states=emb_g).sample
    pred_c = unet(z, t, encoder_hidden_states=emb_c).sample
    pred_g = unet(z, t, encoder_hidden_states=emb_g).sample
    return F.mse_loss(pred_c.float(), e_a.float()) + lam * F.mse_loss(pred_g.float(), e_g.float())


def optimise_delta(loss_fn: Callable[[torch.Tensor], torch.Tensor], delta: torch.Tensor, opt: torch.optim.Optimizer,
                   max_steps: int, accumulate: bool = False,
                   on_step: Callable[[float], None] | None = None) -> list[float]:
    """The anchor loop: Adam steps on ``delta`` until the loss is negative or ``max_steps`` is reached.

    As the code: the loss is computed, the loop ends if it is < 0 (without a step), else one step is taken.

    Returns:
        The loss of every evaluation (the last one is negative when the stopping rule fired).
    """
    losses = []
    for _ in range(max_steps):
        loss = loss_fn(delta)
        losses.append(float(loss.detach()))
        if losses[-1] < 0:
            break
        (grad,) = torch.autograd.grad(loss, delta)
        delta.grad = grad if not accumulate or delta.grad is None else delta.grad + grad
        opt.step()
        if on_step is not None:
            on_step(losses[-1])
    return losses


@contextlib.contextmanager
def accumulating_gradients(params: dict[str, torch.nn.Parameter], enabled: bool) -> Iterator[None]:
    """Within the block, every gradient computed for ``params`` is the running sum of all so far.

    Reproduces the code's missing ``opt.zero_grad()`` with the shared :class:`Trainer` (which zeroes).
    """
    if not enabled:
        yield
        return
    acc: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            total = grad + acc[name] if name in acc else grad
            acc[name] = total.detach()
            return total
        return hook

    handles = [p.register_hook(make(n)) for n, p in params.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@register_method("advanchor")
class AdvAnchor(Method):
    """Fine-tune cross-attention toward an adversarial anchor's prediction."""

    display_name = "AdvAnchor"

    smoke_settings = {"steps": 3, "inner_steps": 2}

    @dataclass
    class Config:
        """AdvAnchor settings; defaults are the README command at Mengnan-Zhao-Happy/AdvAnchor 53514b4, except
        ``similarity`` and ``accumulate_grads``, where the code and the paper's text differ (module docstring).

        Attributes:
            strategy: ``op1`` alternating (paper main), ``op2`` sequential, ``op3`` cyclical.
            adv_loss: ``adv1`` (prediction similarity; README command) or ``adv2`` (change vs. generic prompt).
            similarity: ``cosine`` (paper text) or ``mean_product`` (the code).
            delta_space: ``encoder_output`` or ``token_input`` (see the module docstring).
            delta_span: ``concept`` (the concept's tokens) or ``concept_to_end`` (also every later position).
            accumulate_grads: Reproduce the code's missing ``zero_grad`` in both loops.
            steps: Unlearning steps = training images (batch 1).
            inner_steps: Cap of the anchor loop per image (``w_iter_break``).
            lr: Adam learning rate of the UNet.
            delta_lr: Adam learning rate of delta.
            delta_init_std: delta ~ N(0, 1) x this.
            lam: Weight of the generic-prompt preservation term (code 10).
            train_method: Parameter group (``xattn``: every attn2 tensor, the code).
            templates: Task kind -> [concept prompt, generic prompt, anchor base prompt].
            prompt: The text to erase; empty means the task's concept text.
            diagnostics: Record the delta norm and the anchor's distance from the concept per unlearning step
                (three extra no-grad forwards per step) in meta.json.
        """

        strategy: str = "op1"
        adv_loss: str = "adv1"
        similarity: str = "cosine"
        delta_space: str = "encoder_output"
        delta_span: str = "concept"
        accumulate_grads: bool = False
        steps: int = 50
        inner_steps: int = 30
        lr: float = 1e-5
        delta_lr: float = 1e-4
        delta_init_std: float = 1e-7
        lam: float = 10.0
        train_method: str = "xattn"
        templates: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in
                                                                         DEFAULT_TEMPLATES.items()})
        prompt: str = ""
        diagnostics: bool = True

        def __post_init__(self) -> None:
            check_choice("strategy", self.strategy, ("op1", "op2", "op3"))
            check_choice("adv_loss", self.adv_loss, ("adv1", "adv2"))
            check_choice("similarity", self.similarity, ("cosine", "mean_product"))
            check_choice("delta_space", self.delta_space, ("encoder_output", "token_input"))
            check_choice("delta_span", self.delta_span, ("concept", "concept_to_end"))
            for kind, tpl in self.templates.items():
                if len(tpl) != 3 or "{concept}" not in tpl[0] or "{concept}" not in tpl[2]:
                    from erasebench.errors import ConfigError

                    raise ConfigError(f"templates.{kind} must be [concept prompt, generic prompt, anchor base "
                                      "prompt], the first and last with '{concept}'.")

    def templates(self, task: Task) -> list[str]:
        """[concept prompt, generic prompt, anchor base prompt] templates for the task's kind (object if unknown)."""
        c = self.config
        return list(by_kind(c.templates, task.kind, None) or c.templates.get("object") or DEFAULT_TEMPLATES["object"])

    def prompts(self, task: Task) -> tuple[str, str, str, str]:
        """(concept, concept prompt, generic prompt, anchor base prompt) for the task's kind."""
        concept = self.config.prompt or task.concept_text
        tpl = self.templates(task)
        return concept, tpl[0].format(concept=concept), tpl[1].format(concept=concept), tpl[2].format(concept=concept)

    @torch.no_grad()
    def _latents(self, pipe: Any, run: RunContext, prompt: str, n: int, gen: torch.Generator) -> torch.Tensor:
        items = [PromptItem(prompt, seed=20_000 + i, label="advanchor") for i in range(n)]
        images = run.generate(pipe, items)  # the original model's images, cached and shared
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1 for im in images]))
        x = x.permute(0, 3, 1, 2).to(run.device, pipe.vae.dtype)
        out = []
        for chunk in x.split(16):
            dist = pipe.vae.encode(chunk).latent_dist
            noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
            out.append((dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor)
        return torch.cat(out)

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The UNet tensors of ``train_method``."""
        return qualified("unet", select_parameters(pipe.unet, self.config.train_method))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Render concept images, then alternate (or sequence) anchor search and unlearning steps."""
        from diffusers import DDPMScheduler

        c = self.config
        concept, p_c, p_g, p_a = self.prompts(task)
        gen = torch.Generator().manual_seed(run.seed)
        latents = self._latents(pipe, run, p_c, c.steps, gen)
        unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
        self._unet = unet
        te.requires_grad_(False)
        emb_c, emb_g = encode(pipe, [p_c]), encode(pipe, [p_g])
        # delta covers the concept's real tokens in the anchor base prompt, right after the prefix's tokens.
        prefix = self.templates(task)[2].split("{concept}")[0].rstrip()
        start = 1 + len(concept_token_ids(tok, prefix)) if prefix else 1
        n_tok = len(concept_token_ids(tok, concept))
        if c.delta_span == "concept_to_end":
            n_tok = tok.model_max_length - start
        anchor_ids = tok([p_a], padding="max_length", max_length=tok.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
        emb_a_base = encode(pipe, [p_a])
        self.resolved = {"concept_prompt": p_c, "generic_prompt": p_g, "anchor_prompt": p_a,
                         "delta_positions": [start, start + n_tok], "images": c.steps}

        def anchor(delta: torch.Tensor) -> torch.Tensor:
            if c.delta_space == "token_input":
                return text_states(te, anchor_ids, delta, start, mode="add")
            pad = (0, 0, start, emb_a_base.shape[1] - start - n_tok)
            return emb_a_base.float() + F.pad(delta.float(), pad)  # fp32: delta's 1e-4 steps vanish in fp16

        params = select_parameters(unet, c.train_method)
        frozen = Shadow(params)
        noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        # The loss starts at ~0 by construction (trained = original weights, anchor = concept + ~1e-7), so the
        # divergence check is measured against a loss of 1 (NaN/inf still stop the run).
        trainer = Trainer(params, "adam", c.lr, c.steps, desc=f"advanchor-{c.strategy}", loss_scale=1.0)
        delta = (torch.randn((1, n_tok, emb_c.shape[-1]), generator=gen) * c.delta_init_std).to(run.device)

        def noisy(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            _, t = esd_timesteps(50, "compvis", gen)  # t_enc ~ U{0..49}, t ~ U[20 t_enc, 20 t_enc + 20)
            x0 = latents[i : i + 1]
            tt = torch.tensor([t], device=run.device)
            return noise_sched.add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0), tt), tt

        self.trace: list[tuple[str, int]] = []
        self.adv_losses: list[list[float]] = []
        self.losses: list[float] = []
        self.diagnostics: dict[str, list[float]] = {k: [] for k in ("delta_norm", "anchor_shift", "sim_anchor_concept")}

        def delta_phase(i: int, z: torch.Tensor, t: torch.Tensor, max_steps: int, d: torch.Tensor) -> torch.Tensor:
            d = d.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([d], lr=c.delta_lr)  # a fresh Adam per image, as the code

            def loss_fn(x: torch.Tensor) -> torch.Tensor:
                with trainer.autocast:
                    return adv_loss(unet, z, t, anchor(x).to(unet.dtype), emb_c, emb_g, c.adv_loss, c.similarity)

            # The whole loop runs with the original weights swapped in: backward must see the same values.
            with frozen.swap():
                self.adv_losses.append(optimise_delta(loss_fn, d, opt, max_steps, c.accumulate_grads,
                                                      on_step=lambda _: self.trace.append(("delta", i))))
            return d.detach()

        def unet_step(i: int, z: torch.Tensor, t: torch.Tensor) -> None:
            with torch.no_grad():
                emb_anchor = anchor(delta).to(unet.dtype)
                if c.diagnostics:
                    self._record(i, z, t, emb_anchor, emb_c, emb_g, delta, frozen)
            with trainer.autocast:
                loss = unlearn_loss(unet, frozen, z, t, emb_c, emb_anchor, emb_g, c.lam)
            self.losses.append(trainer.step(loss))
            self.trace.append(("unet", i))

        with accumulating_gradients(params, c.accumulate_grads):
            if c.strategy == "op1":
                for i in range(c.steps):
                    z, t = noisy(i)
                    delta = delta_phase(i, z, t, c.inner_steps, delta)
                    unet_step(i, z, t)
            else:
                for _ in range(c.inner_steps if c.strategy == "op3" else 1):
                    for i in range(c.steps):
                        z, t = noisy(i)
                        delta = delta_phase(i, z, t, 1 if c.strategy == "op3" else c.inner_steps, delta)
                for i in range(c.steps):
                    z, t = noisy(i)
                    unet_step(i, z, t)
        trainer.finish()
        self.delta = delta
        if self.adv_losses:  # inner-loop summary per anchor search: steps taken, first and last L_adv
            self.diagnostics.update(inner_steps=[len(x) for x in self.adv_losses],
                                    adv_first=[x[0] for x in self.adv_losses],
                                    adv_last=[x[-1] for x in self.adv_losses])
        return pipe

    @torch.no_grad()
    def _record(self, i: int, z: torch.Tensor, t: torch.Tensor, emb_anchor: torch.Tensor, emb_c: torch.Tensor,
                emb_g: torch.Tensor, delta: torch.Tensor, frozen: Shadow) -> None:
        """Log how far the anchor is from the concept at unlearning step ``i`` (meta.json ``diagnostics``).

        ``anchor_shift`` = |eps*(a) - eps*(c)| / |eps*(g) - eps*(c)|: 0 means the unlearning target is the
        concept's own prediction (nothing to erase), 1 means it is as far away as the generic prompt's.
        """
        with frozen.swap():
            e_a, e_c, e_g = (self._unet(z, t, encoder_hidden_states=e).sample.float()
                             for e in (emb_anchor, emb_c, emb_g))
        self.diagnostics["delta_norm"].append(float(delta.norm()))
        self.diagnostics["anchor_shift"].append(float((e_a - e_c).norm() / (e_g - e_c).norm().clamp_min(1e-12)))
        self.diagnostics["sim_anchor_concept"].append(float(similarity(e_a, e_c, "cosine")))
