"""TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models (Chen, Guo, Wang, Zhang, Nie,
Liu; arXiv 2503.07389, 2025).

Reference code: github.com/ddgoodgood/TRCE at commit 0da9b71 (``run_trce_stage1.py``, ``run_trce_stage2.py``,
``stage2_data_preparation.py``, ``src/cfr_utils.py``, ``config/stage{1,2}/stage{1,2}_sexual_default.yaml``).
Its stage-1 preservation cache follows MACE (github.com/Shilin-LU/MACE @ 057e7a6, ``src/cache_coco.py``).

**Stage 1, closed-form [EoT] edit** (no optimiser). Malicious prompts m_i ("{template} with the concept") are
paired with contextually similar safe prompts s_i (the same template with the safe phrase); every
``attn2.to_k`` / ``attn2.to_v`` weight W becomes (reference ``closed_form_refinement`` with lamb 0):

    W_new = (lamb W + 1/N sum_i sum_k w_k W c^s_ik c^m_ik^T + p^2/M sum_j sum_tok W c_j c_j^T)
          . (lamb I + 1/N sum_i sum_k w_k c^m_ik c^m_ik^T + p^2/M sum_j sum_tok c_j c_j^T)^-1

with c^m_ik / c^s_ik the text states of the malicious / safe prompt at token kind k: [SoT], first [EoT], last
[EoT] (padding; base weight 77 - tokens), first concept token (mapped to the safe prompt's last [EoT]);
``token_weights`` w = [0, 1, 0, 0] (the code default) keeps only the first [EoT]. The preservation term sums all
77 token states c_j of M preservation prompts (MACE's COCO cache), weighted p^2/M: the reference multiplies
the cache by ``preserve_scale`` p = 0.01 twice (``run_trce_stage1.py`` and ``closed_form_refinement``) and
divides by 3e4 prompts. Solved with :mod:`erasebench.closed_form` (float64).

**Stage 2, contrastive early-step fine-tuning.** Trajectories of the *original* model for the malicious prompt
(50-step DDIM, CFG 3) and unconditional ones (CFG 7.5 on "", i.e. the unconditional model) are generated first.
Each step takes the next malicious trajectory, s ~ U{0..25} (``max_early_step``; the first 26 of 50 steps,
t >= 481), its latent x after step s, queried at the step's timestep t_s (as the code: the latent is one step
less noisy than t_s), and with the original model eps*:

    P = eps*(x, s) + g (eps*(x, s) - eps*(x, ""))       R = eps*(x, m) + g (eps*(x, m) - eps*(x, ""))   (g = 15)
    h(e) = max(0, beta (mse(e, P) - mse(e, R) + margin))                (beta 1, margin 0.01; mse per sample)
    L = (h(eps_theta(x, m)) + h(eps_theta(x, ""))) / 2
        + lambda_reg / B sum_{b<B} mse(eps_theta(u_b, ""), eps_1(u_b, ""))   (lambda_reg 100, B 4)

where u_b are unconditional-trajectory latents after a step s_b ~ U{0..50} (s_b = 50 drops the term, as the
code's IndexError) at t_b ~ U[20 (49 - s_b), 20 (50 - s_b)), and eps_1 is the stage-1 model. Trained: every
``attn1`` tensor and ``attn2.to_q`` (the stage-1 k/v stay); AdamW lr 1e-6, betas (0.9, 0.999), weight decay 0.01,
3 epochs over 100 trajectories (20 concept pairs x 5 in the code) = 300 steps.

Settings (the code defaults, ``*_sexual_default.yaml``): stage 1 preserve_scale 0.01, lamb 0, token weights
[0, 1, 0, 0], 15 templates per concept; stage 2 as above. I2P harm categories (task kind ``unsafe``) take the
code's unsafe preset (``*_unsafe_default.yaml``): preserve_scale 0.02, stage-2 template "an image depicting {}",
and each category's safe phrase from its group in ``data/concepts/unsafe.json`` (hate "Inclusive and respectful",
harassment "Supportive and respectful interactions", violence "Peaceful and calm", self-harm "Hope and support",
sexual "a person wearing clothes"; shocking and illegal activity have no group there and take the task's anchor).

Deviations from the reference code:
    - Prompt pairs come from the task, not from ``data/concepts/sexual.json`` (20 GPT-made synonyms of nudity,
      each mapped to "a person wearing clothes"; the repository has no license, so nothing is shipped): the
      task's erase phrase and ``templates[kind]`` filled with the concept text are mapped to the same text with
      the safe phrase (``safe_phrases[concept or kind]``, else the task's anchor). The templates are this
      file's own short phrasings (the reference's 15 augmentation templates come from MACE's non-commercial
      code), so there are 16 pairs instead of 20 x 15 = 300. Stage 2 uses ``stage2_templates[kind]`` ("a photo
      of {concept}" as the code for sexual concepts, "an image depicting {concept}" as for unsafe ones; objects
      and styles, which the code does not cover, get "a photo of {concept}" / "a painting by {concept}"), cycled over ``num_trajectories`` trajectories; an empty list reuses the stage-1 pairs.
    - Preservation: the first ``preserve_prompts`` captions of the shipped COCO-10k list (``coco_10k.csv``, CC BY
      4.0), all 77 token states each, instead of the pre-cached COCO-30k sums; weighted p^2/M with M the number
      used. The code divides the downloaded cache by 3e4; how many captions that cache holds is not documented
      (MACE's ``cache_coco.py`` sums all ~617k COCO-2014 captions, which would make the code's term ~20x
      stronger than p^2 / M); 3e4 is assumed here. ``preserve_source=concepts`` uses the templates with the
      task's other concepts instead (the toy world, whose word-level text encoder does not know COCO words). The
      sum of outer products is passed to the solver as its symmetric square root (same solve, D x D rows).
    - The first [EoT] is the real end-of-text position of the tokenised prompt (the code counts words,
      ``len(sentence.split()) + 1``, which misses it when a word is several BPE tokens); the concept-token kind
      uses the first BPE token of the concept text.
    - The DDIM chain is the harness's (SD's leading spacing with steps_offset 1: 981, 961, ...; the code's
      scheduler has offset 0: 980, 960, ...); t_b's interval is the same 1000 / ddim_steps wide bin.
    - The unsafe preset erases ~60 harm terms of every category in one model; here one I2P category per run.
    - The reference never calls ``optimizer.zero_grad()``, so every step applies the running sum of all past
      gradients; ``zero_grad=false`` (default) reproduces this, ``true`` clears them each step.
    - Only the unconditional trajectories the schedule visits are generated (the code generates 2000 and visits
      the first 4 x 100), and only their visited latents are kept. The code's constant 0.01 added to the
      preservation sum (no gradient) is left out of the logged loss.
    - Trained tensors are fp32 master weights (autocast on GPU); the original (eps*) and stage-1 (eps_1) models
      are swapped-in values of the changed tensors, not second UNets. One generator seeded with the run seed
      draws noises, steps and timesteps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from erasebench.api import Method, RunContext, Task, by_kind
from erasebench.closed_form import EditGroup, kv_layers, solve_edit
from erasebench.datafiles import resolve_data_path
from erasebench.erasure import Shadow, Trainer, check_choice, ddim_scheduler, encode, qualified
from erasebench.errors import ConfigError, ErasebenchError
from erasebench.prompt_csv import read_prompt_csv
from erasebench.registry import register_method

#: Safe phrase per concept key or task kind, before the task's anchor (the code maps every sexual term to this).
#: The I2P categories take the phrase of their group in the code's ``data/concepts/unsafe.json`` (shocking and
#: illegal activity have no group there: the task's anchor).
DEFAULT_SAFE = {"nudity": "a person wearing clothes", "sexual": "a person wearing clothes",
                "hate": "Inclusive and respectful", "harassment": "Supportive and respectful interactions",
                "violence": "Peaceful and calm", "self_harm": "Hope and support"}
#: Stage-1 preservation p per task kind (``stage1_{sexual,unsafe}_default.yaml``).
PRESERVE_SCALE = {"nudity": 0.01, "unsafe": 0.02}
#: Fallback safe phrase when the task has no anchor.
FALLBACK_SAFE = {"style": "art", "object": "an object", "nudity": "a person wearing clothes"}
#: Stage-1 prompt templates per kind (own phrasings in the spirit of the reference's 15 augmentations).
DEFAULT_TEMPLATES = {
    "object": ["{concept} in a photo", "a snapshot showing {concept}", "a photograph of {concept}",
               "an illustration of {concept}", "a digital render of {concept}", "a black and white photo of {concept}",
               "a sketch of {concept}", "an oil painting of {concept}", "a close-up of {concept}",
               "{concept} at sunset", "a magazine cover with {concept}", "a realistic picture of {concept}",
               "a cartoon of {concept}", "a high resolution photo of {concept}", "a drawing showing {concept}"],
    "style": ["an artwork by {concept}", "a painting by {concept}", "a landscape in the style of {concept}",
              "a portrait by {concept}", "a sketch by {concept}", "a famous work of {concept}",
              "a still life by {concept}", "an illustration in the style of {concept}", "a city painted by {concept}",
              "a digital artwork in the style of {concept}", "a drawing by {concept}", "a print by {concept}",
              "a colorful work by {concept}", "an early piece by {concept}", "a late painting by {concept}"],
    "nudity": ["{concept} in a photo", "a snapshot showing {concept}", "a photograph of {concept}",
               "an illustration of {concept}", "a digital render of {concept}", "a black and white photo of {concept}",
               "a sketch of {concept}", "an oil painting of {concept}", "a close-up of {concept}",
               "{concept} at sunset", "a magazine cover with {concept}", "a realistic picture of {concept}",
               "a cartoon of {concept}", "a high resolution photo of {concept}", "a drawing showing {concept}"],
}
#: Stage-2 trajectory templates per kind (the code: "a photo of {}" for sexual terms).
DEFAULT_STAGE2_TEMPLATES = {"object": ["a photo of {concept}"], "style": ["a painting by {concept}"],
                            "nudity": ["a photo of {concept}"], "unsafe": ["an image depicting {concept}"]}
#: ``safe_phrases`` value that drops the concept words instead of replacing them.
REMOVE = "<remove>"
TOKEN_KINDS = ("sot", "first_eot", "last_eot", "keyword")


def contrastive_loss(eps_m: torch.Tensor, eps_u: torch.Tensor, ref_m: torch.Tensor, ref_s: torch.Tensor,
                     ref_u: torch.Tensor, guidance: float, beta: float, margin: float) -> torch.Tensor:
    """TRCE's stage-2 target loss (reference ``run_trce_stage2.py``), averaged over the batch.

    Args:
        eps_m, eps_u: The trained model's predictions for the malicious prompt and for "".
        ref_m, ref_s, ref_u: The original model's predictions for the malicious, safe and empty prompts.
    """
    prefer = ref_s + guidance * (ref_s - ref_u)
    reject = ref_m + guidance * (ref_m - ref_u)

    def hinge(e: torch.Tensor) -> torch.Tensor:
        pref = F.mse_loss(e.float(), prefer.float(), reduction="none").mean(dim=(1, 2, 3))
        rej = F.mse_loss(e.float(), reject.float(), reduction="none").mean(dim=(1, 2, 3))
        return torch.clamp(beta * (pref - rej + margin), min=0)

    return ((hinge(eps_m) + hinge(eps_u)) / 2).mean()


def trained_parameters(unet: Any) -> dict[str, torch.nn.Parameter]:
    """Stage 2's trained tensors: every self-attention (``attn1``) tensor and the cross-attention queries."""
    chosen = {n: p for n, p in unet.named_parameters() if ".attn1." in n or ".attn2.to_q." in n}
    if not chosen:
        raise ErasebenchError(f"No attn1 / attn2.to_q tensors in {type(unet).__name__}.")
    return chosen


def fill(template: str, phrase: str) -> str:
    """``template`` with ``{concept}`` replaced by ``phrase``; spaces tidied (an empty phrase drops the words)."""
    return re.sub(r"\s+", " ", template.replace("{concept}", phrase)).strip()


@torch.no_grad()
def trajectory_latents(unet: Any, sched: Any, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                       guidance: float, n_steps: int) -> list[torch.Tensor]:
    """Latents after each of the first ``n_steps`` steps of a CFG DDIM chain (eta 0) from ``noise`` (batched)."""
    x = noise * sched.init_noise_sigma
    out = []
    for t in sched.timesteps[:n_steps]:
        if guidance == 1.0 or torch.equal(cond, uncond):
            eps = unet(x, t, encoder_hidden_states=cond).sample
        else:
            e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = e_u + guidance * (e_c - e_u)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(x)
    return out


@register_method("trce")
class TRCE(Method):
    """Closed-form [EoT] edit of cross-attention k/v, then contrastive fine-tuning of the early denoising steps."""

    display_name = "TRCE"

    smoke_settings = {"num_trajectories": 2, "epochs": 1, "ddim_steps": 4, "max_early_step": 1,
                      "reg_trajectories": 2, "reg_batch_size": 2, "preserve_prompts": 8, "lr": 1e-4}

    @dataclass
    class Config:
        """TRCE settings; defaults are the reference code's (0da9b71, ``*_sexual_default.yaml``).

        Attributes:
            stage1: Run the closed-form edit. stage2: Run the contrastive fine-tuning.
            templates: Task kind -> stage-1 templates with ``{concept}`` (each gives a malicious/safe pair).
            safe_phrases: Concept key or task kind (looked up in this order) -> safe phrase (``{anchor}`` is
                filled in; ``<remove>`` drops the concept words); otherwise the task's anchor. The code maps every
                sexual term to "a person wearing clothes" and each other unsafe concept to its own phrase
                (``data/concepts/unsafe.json``; the I2P categories' defaults are their groups' phrases).
            preserve_scale: Stage-1 preservation p (applied squared, as the code); ``null``: the code's preset
                for the task's kind (0.01, 0.02 for unsafe).
            lamb: Stage-1 lambda (weight regulariser; 0 in the code).
            token_weights: Stage-1 weights of [SoT, first EoT, last EoT, concept token].
            preserve_source: ``coco`` (shipped COCO-10k captions) or ``concepts`` (templates with the task's other
                concepts). preserve_prompts: How many COCO captions (all 10,000 by default).
            stage2_templates: Task kind -> stage-2 templates; empty = the stage-1 pairs.
            num_trajectories: Malicious trajectories (the code: 20 prompts x 5). epochs: Passes over them.
            lr: AdamW learning rate. weight_decay: AdamW weight decay.
            guidance: g of the preferred / rejected targets. beta, margin: The hinge's scale and margin.
            reg_scale: lambda_reg of the unconditional regulariser (the code's stage-2 ``preserve_scale``).
            reg_batch_size: Unconditional latents per step. reg_trajectories: Unconditional trajectories (2000).
            max_early_step: Last DDIM step index (0-based) the target loss samples.
            ddim_steps: DDIM chain length. traj_guidance / reg_guidance: CFG scales of the trajectories.
            zero_grad: Clear gradients each step (the code never does; see the module docstring).
        """

        stage1: bool = True
        stage2: bool = True
        templates: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in
                                                                         DEFAULT_TEMPLATES.items()})
        safe_phrases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SAFE))
        preserve_scale: float | None = None
        lamb: float = 0.0
        token_weights: list[float] = field(default_factory=lambda: [0.0, 1.0, 0.0, 0.0])
        preserve_source: str = "coco"
        preserve_prompts: int = 10000
        stage2_templates: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in
                                                                                DEFAULT_STAGE2_TEMPLATES.items()})
        num_trajectories: int = 100
        epochs: int = 3
        lr: float = 1e-6
        weight_decay: float = 0.01
        guidance: float = 15.0
        beta: float = 1.0
        margin: float = 0.01
        reg_scale: float = 100.0
        reg_batch_size: int = 4
        reg_trajectories: int = 2000
        max_early_step: int = 25
        ddim_steps: int = 50
        traj_guidance: float = 3.0
        reg_guidance: float = 7.5
        zero_grad: bool = False

        def __post_init__(self) -> None:
            check_choice("preserve_source", self.preserve_source, ("coco", "concepts"))
            if len(self.token_weights) != len(TOKEN_KINDS):
                raise ConfigError(f"token_weights needs {len(TOKEN_KINDS)} values ({', '.join(TOKEN_KINDS)}).")
            if not 0 <= self.max_early_step < self.ddim_steps:
                raise ConfigError("max_early_step must lie in [0, ddim_steps).")
            if self.num_trajectories < 1 or self.epochs < 0 or self.reg_batch_size < 0:
                raise ConfigError("num_trajectories must be >= 1, epochs and reg_batch_size >= 0.")

    # -- prompts ----------------------------------------------------------------------------------------------

    def safe_phrase(self, task: Task) -> str:
        """The phrase that replaces the concept in safe prompts ("" drops it)."""
        table = self.config.safe_phrases
        phrase = (table.get(task.concept) or by_kind(table, task.kind, "") or task.anchor
                  or by_kind(FALLBACK_SAFE, task.kind, "an object"))
        return "" if phrase == REMOVE else phrase.format(anchor=task.anchor)

    def _templates(self, table: dict[str, list[str]], task: Task) -> list[str]:
        return list(by_kind(table, task.kind, table.get("object", [])))

    def prompt_pairs(self, task: Task) -> list[tuple[str, str]]:
        """Stage-1 (malicious, safe) pairs: the task's erase phrase, then every template with the concept."""
        concept, safe = task.concept_text, self.safe_phrase(task)
        erase = task.erase_text()
        pat = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
        first = (erase, fill(pat.sub("{concept}", erase), safe)) if pat.search(erase) else (erase, safe)
        pairs = [first] + [(fill(t, concept), fill(t, safe)) for t in self._templates(self.config.templates, task)]
        return list(dict.fromkeys(pairs))

    def stage2_pairs(self, task: Task) -> list[tuple[str, str]]:
        """(malicious, safe) prompts of the stage-2 trajectories."""
        tpl = self._templates(self.config.stage2_templates, task)
        if not tpl:
            return self.prompt_pairs(task)
        return [(fill(t, task.concept_text), fill(t, self.safe_phrase(task))) for t in tpl]

    def preserve_texts(self, task: Task, data_path: Callable[[str], Path] = resolve_data_path) -> list[str]:
        """Prompts whose k/v outputs stage 1 keeps (all their tokens); COCO captions come through ``data_path``."""
        c = self.config
        if c.preserve_source == "coco":
            return [row["prompt"] for row in read_prompt_csv(data_path("coco_10k.csv"))][:c.preserve_prompts]
        others = [text for key, text in task.concepts.items() if key != task.concept]
        pat = re.compile(rf"\b{re.escape(task.concept_text)}\b", re.IGNORECASE)
        erase = task.erase_text()
        texts = [pat.sub(o, erase) for o in others] if pat.search(erase) else []
        texts += [fill(t, o) for o in others for t in self._templates(c.templates, task)]
        return list(dict.fromkeys(texts))

    # -- stage 1 ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def edit_groups(self, pipe: Any, task: Task, data_path: Callable[[str], Path] = resolve_data_path
                    ) -> list[EditGroup]:
        """The closed-form groups: per token kind the malicious states -> safe states, and the preservation
        (COCO captions found through ``data_path``)."""
        c = self.config
        pairs = self.prompt_pairs(task)
        mal, safe = [m for m, _ in pairs], [s for _, s in pairs]
        tok = pipe.tokenizer
        ids_m = tok(mal, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt")
        ids_s = tok(safe, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt")
        st_m, st_s = encode(pipe, mal).float(), encode(pipe, safe).float()
        n_m, n_s = ids_m.attention_mask.sum(1).tolist(), ids_s.attention_mask.sum(1).tolist()
        last = tok.model_max_length - 1
        key_ids = tok(task.concept_text, add_special_tokens=False).input_ids[:1]
        rows: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], list[float]]] = {k: ([], [], [])
                                                                                        for k in TOKEN_KINDS}
        for i in range(len(pairs)):
            picks = {"sot": (0, 0, 1.0), "first_eot": (n_m[i] - 1, n_s[i] - 1, 1.0),
                     "last_eot": (last, last, float(tok.model_max_length - n_m[i]))}
            ids = ids_m.input_ids[i].tolist()
            if key_ids and key_ids[0] in ids[1:n_m[i] - 1]:
                picks["keyword"] = (ids.index(key_ids[0], 1), last, 1.0)
            for kind, (a, b, base) in picks.items():
                rows[kind][0].append(st_m[i, a])
                rows[kind][1].append(st_s[i, b])
                rows[kind][2].append(base)
        groups = []
        for kind, w in zip(TOKEN_KINDS, c.token_weights):
            ins, outs, bases = rows[kind]
            if w == 0 or not ins:
                continue
            scale = torch.tensor(bases).sqrt()[:, None]  # per-row weight base, folded into the states
            groups.append(EditGroup(torch.stack(ins) * scale, torch.stack(outs) * scale, w / len(pairs)))
        texts = self.preserve_texts(task, data_path)
        p = c.preserve_scale if c.preserve_scale is not None else by_kind(PRESERVE_SCALE, task.kind, 0.01)
        if p > 0 and texts:
            dim = st_m.shape[-1]
            gram = torch.zeros(dim, dim, dtype=torch.float64)
            for k in range(0, len(texts), 256):
                states = encode(pipe, texts[k:k + 256]).reshape(-1, dim).double().cpu()
                gram += states.T @ states
            evals, evecs = torch.linalg.eigh(gram)
            root = (evecs * evals.clamp(min=0).sqrt()).T  # root^T root = gram
            groups.append(EditGroup(root, None, p ** 2 / len(texts)))
        return groups

    @torch.no_grad()
    def stage1(self, pipe: Any, task: Task, data_path: Callable[[str], Path] = resolve_data_path) -> None:
        """Rewrite every cross-attention k/v weight in closed form (no optimiser)."""
        groups = self.edit_groups(pipe, task, data_path)
        for p in kv_layers(pipe.unet).values():
            p.data = solve_edit(p.data, groups, self.config.lamb)

    # -- stage 2 ----------------------------------------------------------------------------------------------

    def schedule(self, gen: torch.Generator) -> tuple[list[tuple[int, int]], list[list[tuple[int, int, int]]]]:
        """Pre-drawn stage-2 randomness: per step (trajectory, step s) and its regulariser draws
        [(unconditional trajectory, step s_b, timestep t_b)] (s_b = ddim_steps draws are dropped, as the code)."""
        c = self.config
        width = 1000 // c.ddim_steps
        n_reg = min(c.reg_trajectories, c.num_trajectories * c.reg_batch_size)
        steps, regs = [], []
        for _ in range(c.epochs):
            for i in range(c.num_trajectories):
                steps.append((i, int(torch.randint(c.max_early_step + 1, (1,), generator=gen))))
                draws = []
                for j in range(c.reg_batch_size):
                    s = int(torch.randint(c.ddim_steps + 1, (1,), generator=gen))
                    if s < c.ddim_steps:
                        lo = (c.ddim_steps - 1 - s) * width
                        draws.append(((i * c.reg_batch_size + j) % n_reg, s,
                                      int(torch.randint(lo, lo + width, (1,), generator=gen))))
                regs.append(draws)
        return steps, regs

    @torch.no_grad()
    def trajectories(self, pipe: Any, task: Task, gen: torch.Generator, regs: list[list[tuple[int, int, int]]],
                     device: torch.device) -> tuple[list[tuple[int, list[torch.Tensor]]], dict[tuple[int, int], Any]]:
        """The original model's malicious trajectories (pair index, latents after steps 0..max_early_step) and the
        visited unconditional latents {(trajectory, step): latent}."""
        c = self.config
        unet = pipe.unet
        sched = ddim_scheduler(pipe, c.ddim_steps)
        size = unet.config.sample_size
        shape = (unet.config.in_channels, size, size)
        pairs = self.stage2_pairs(task)
        emb_0 = encode(pipe, [""])
        chunk = 16
        neg = []
        for k in range(0, c.num_trajectories, chunk):
            idx = list(range(k, min(k + chunk, c.num_trajectories)))
            noise = torch.randn((len(idx), *shape), generator=gen).to(device, unet.dtype)
            cond = encode(pipe, [pairs[i % len(pairs)][0] for i in idx])
            lat = trajectory_latents(unet, sched, noise, cond, emb_0.expand(len(idx), -1, -1), c.traj_guidance,
                                     c.max_early_step + 1)
            neg += [(i % len(pairs), [x[b:b + 1] for x in lat]) for b, i in enumerate(idx)]
        need: dict[int, set[int]] = {}
        for draws in regs:
            for r, s, _ in draws:
                need.setdefault(r, set()).add(s)
        unc: dict[tuple[int, int], Any] = {}
        n_reg = min(c.reg_trajectories, c.num_trajectories * c.reg_batch_size)
        for k in range(0, n_reg, chunk):  # noise drawn for every used index, so the draws do not depend on `need`
            idx = list(range(k, min(k + chunk, n_reg)))
            noise = torch.randn((len(idx), *shape), generator=gen).to(device, unet.dtype)
            keep = [i for i in idx if i in need]
            if not keep:
                continue
            sel = noise[[idx.index(i) for i in keep]]
            e0 = emb_0.expand(len(keep), -1, -1)
            lat = trajectory_latents(unet, sched, sel, e0, e0, c.reg_guidance, max(max(need[i]) for i in keep) + 1)
            for b, i in enumerate(keep):
                for s in need[i]:
                    unc[(i, s)] = lat[s][b:b + 1]
        return neg, unc

    def stage2(self, pipe: Any, task: Task, run: RunContext, original: Shadow, gen: torch.Generator,
               data: tuple[Any, Any, Any]) -> None:
        """Contrastive fine-tuning of ``attn1`` and ``attn2.to_q`` on the early steps of the trajectories."""
        c = self.config
        unet = pipe.unet
        steps, regs, (neg, unc) = data
        unet.requires_grad_(False)
        params = trained_parameters(unet)
        stage1 = Shadow(params)  # the regulariser's reference: the model after stage 1
        sched = ddim_scheduler(pipe, c.ddim_steps)
        pairs = self.stage2_pairs(task)
        emb_0 = encode(pipe, [""])
        emb = {i: (encode(pipe, [m]), encode(pipe, [s])) for i, (m, s) in enumerate(pairs)}
        trainer = Trainer(params, "adamw", c.lr, len(steps), desc="trce-stage2", betas=(0.9, 0.999),
                          eps=1e-8, weight_decay=c.weight_decay)
        self.losses: list[float] = []
        self.target_timesteps: list[int] = []
        dev = run.device
        for (traj, s), draws in zip(steps, regs):
            pair, lat = neg[traj]
            x = lat[s].to(dev)
            t = sched.timesteps[s].to(dev).reshape(1)
            self.target_timesteps.append(int(t))
            self.last_latent = x
            e_m, e_s = emb[pair]
            with trainer.autocast:
                with torch.no_grad(), original.swap():
                    r_m, r_s, r_u = unet(x.expand(3, -1, -1, -1), t.expand(3),
                                         encoder_hidden_states=torch.cat([e_m, e_s, emb_0])).sample.chunk(3)
                p_m, p_u = unet(x.expand(2, -1, -1, -1), t.expand(2),
                                encoder_hidden_states=torch.cat([e_m, emb_0])).sample.chunk(2)
                loss = contrastive_loss(p_m, p_u, r_m, r_s, r_u, c.guidance, c.beta, c.margin)
                if draws and c.reg_scale:
                    u = torch.cat([unc[(r, sb)] for r, sb, _ in draws]).to(dev)
                    tb = torch.tensor([tb for _, _, tb in draws], device=dev)
                    e0 = emb_0.expand(len(draws), -1, -1)
                    with torch.no_grad(), stage1.swap():
                        target = unet(u, tb, encoder_hidden_states=e0).sample
                    pred = unet(u, tb, encoder_hidden_states=e0).sample
                    reg = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).sum()
                    loss = loss + c.reg_scale * reg / c.reg_batch_size
            value = float(loss.detach())
            if not math.isfinite(value):
                trainer.bar.close()
                raise ErasebenchError(f"TRCE stage 2 diverged at step {len(self.losses)}: loss {value}.")
            if c.zero_grad:
                trainer.opt.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            trainer.opt.step()
            trainer.bar.update(1)
            trainer.bar.set_postfix(loss=f"{value:.4g}")
            self.losses.append(value)
        trainer.finish()

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """Stage 1's cross-attention keys and values and stage 2's attn1 / attn2.to_q tensors."""
        c = self.config
        return (qualified("unet", kv_layers(pipe.unet)) if c.stage1 else set()) | (
            qualified("unet", trained_parameters(pipe.unet)) if c.stage2 else set())

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Stage 1 (closed form), then stage 2 (contrastive fine-tuning); returns the edited ``pipe``."""
        c = self.config
        unet = pipe.unet
        gen = torch.Generator().manual_seed(run.seed)
        original = Shadow({**trained_parameters(unet), **kv_layers(unet)})
        data = None
        if c.stage2:  # trajectories of the original model, before the stage-1 edit
            steps, regs = self.schedule(gen)
            data = (steps, regs, self.trajectories(pipe, task, gen, regs, run.device))
        if c.stage1:
            self.stage1(pipe, task, run.data_path)
        if c.stage2 and data is not None:
            self.stage2(pipe, task, run, original, gen, data)
        return pipe
