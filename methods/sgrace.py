"""S-GRACE: Rethinking Robust Adversarial Concept Erasure in Diffusion Models (preprint, 2025; the repository's
README names no arXiv id).

Reference code: github.com/Qhong-522/S-GRACE at commit 0b5cc75 (``train.py``, ``utils.py``,
``configs/nudity.yml``: the default ``--config_file``, whose values are this method's defaults).

Adversarial training of the **text encoder** TE_phi (the UNet is frozen and used only by the attack), in
``rounds`` (4) rounds of attack-then-edit. Notation: f(h, p) = P(h[p]) the CLIP text feature of the encoder
states h at token position p, P the CLIP text projection (``openai/clip-vit-large-patch14``'s
``text_projection`` for SD v1.4), cos the cosine similarity, f_c = f(TE_0(c), EOT) the original encoder's
feature of the bare concept c.

Attack (``adv_embeddings`` = 8 soft prompts a_i, PGD-style sign steps on the input word embeddings):

    a_i* = argmin_a  mean_j ||z_T,j - eps(x_t,j, TE_phi([SOT; a; EOT...]), t_j)||^2
                     + w_tsim * (1 - mean_i cos(f(TE_phi(a_i), L_i), f_c))

    with 10 steps of Adam (lr 5e-3) on sign(grad) per embedding; x_t is made by running int(t/1000 * 50) steps
    of a 50-step DDIM chain (CFG 3, prompt "a photo of c" / "a picture of c" / "c" by concept kind, original
    model) from z_T, t ~ U{750..949}, and the UNet is queried at that DDPM t; the target z_T is the chain's
    starting noise; L_i = the span length, i.e. f is read at the last adversarial token. The attacker makes
    the *current* encoder reproduce the concept's generation and keeps the prompt CLIP-close to c. (After
    int(t/20) of the 50 steps the chain's latent sits at DDIM timestep 981 - 20 int(t/20), i.e. 41..241, far
    less noisy than the t it is queried at; reproduced as the reference does it.)

"Copycat" initialisation: a_0 = the token embeddings of c; a_i (i >= 1) = ``random_tokens`` random token ids
followed by a comma-joined sample of n ~ U{3..10} related concepts (the concept itself is related concept 0).
Each round after the first, every a_i is redrawn with probability ``update_chance`` (0.8), otherwise the attack
continues from its attacked value of the last round (``keep_attacked``): in the reference the attacked
``nn.Parameter`` shares storage with the stored initial embedding (``train.py`` ~331), so Adam's in-place steps
overwrite it and a prompt that is not redrawn starts from where its attack ended.

Edit (``edit_steps`` = 50 Adam steps, lr 1e-5, per round; a_i* fixed, f0_i = their features before the edit):

    L = [mean_i cos(f_i, f_c) + 1] + w_sim * [1 - mean_i cos(f_i, f0_i)]
        + w_anchor * mean((TE_phi(u) - TE_0(u))^2)  + w_param * sum_tensors mean|phi - phi_0|

    f_i = f(TE_phi(a_i*), L_i); u = ``anchor_count`` (16) unrelated concepts drawn per step, each in a random
    template of "a photo of {}", "a picture of {}", "a image of {}"; the anchor term compares the full
    77-token states. Trained: every encoder layer and the final layer norm (the reference's ``base`` strategy;
    token and position embeddings frozen). The edit itself never runs the UNet.

The related / unrelated concept lists come from ``erasebench/data/sgrace/concepts.yaml`` (written by hand for
erasebench; the reference ships cached GPT-4 answers, ``prompts/<concept>_gpt-4_related_50_unrelated_50.txt``, with
no license, and asks GPT-4 only for a concept without one) or, with ``concept_lists: task``, from
the task: related = the erase split's prompts, unrelated = the preserve split's prompts (the evaluation
prompts: scores are then measured on trained prompts).

Toy world (conf/preset/toy_sgrace.yaml): the toy section of the lists, ``projection: none``, no random tokens,
toy anchor templates and lr 1e-3 (measured numbers there).

The result is a plain text encoder of the same family (the harness saves the changed ``text_encoder.*``
tensors; UNet and VAE are untouched).

Deviations and choices:
    - Concept lists: shipped hand-written lists (25 related + 20 unrelated per real concept, 12 + 16 per toy
      concept) instead of the reference's GPT-4 files (about 50 + 50, with repeats: its related list holds the
      concept twice, since the file's first line repeats it); lists here have no repeats; ``anchor_count`` is
      capped at the number of unrelated ones.
    - Settings: the defaults are ``configs/nudity.yml`` for every task; the reference's per-concept configs
      differ (``conf/method/sgrace.yaml`` lists them) and six of them lack ``anchor_nums``, so they do not run
      as shipped.
    - With ``attack_projection: true`` the [min, max] range is the token embeddings' (the reference's is that of
      token + position).
    - PGD projection: the reference's projection assigns to a loop variable (and swaps min and max), so it never
      acts; the default (``attack_projection: false``) reproduces that. ``true`` clamps each embedding to an
      L_inf ball of 4 * lr around its initial value and to the initial value's [min, max] range.
    - The attack learns the token part of the input embedding (the position embeddings are added by the encoder
      as usual, :func:`erasebench.erasure.token_embedding_override`); the reference learns the sum. Sign-Adam
      updates are identical because the position part is a constant.
    - ``attack_init: target`` (5 random tokens + the concept): the reference's re-draw lengthens the random part by
      the concept's length every round; here it stays 5.
    - Randomness: one generator seeded with the run seed (the reference mixes python ``random`` and torch);
      random token ids are drawn from [0, min(40905, vocabulary size)).
    - ``projection: none`` uses the encoder states directly (the toy world and the tiny test model have no CLIP
      projection); any other value is a Hugging Face CLIP repository whose ``text_projection`` is read from the
      local cache (never downloaded during a run).
    - ``feature_token: eot`` reads f at the end token after the adversarial span instead of the reference's last
      adversarial token (``last``; the concept feature f_c is read at the end token in both).
    - ``xt_prompt_template: auto`` picks the reference's template by task kind (style: "a picture of {}",
      object: "a photo of {}", otherwise "{}"); tasks with an ``erase_prompt`` (the toy world) use it as is.
    - Batching: the attack runs every (prompt, x_t) pair in one UNet batch and the adversarial prompts go through
      the encoder as one batch (the reference: UNet batches of 4, one encoder pass per prompt, and the features
      computed twice); the losses are the same means.
    - The disabled ``reg.dis`` term and the test-time image dumps of the reference are not implemented.
    - Trained tensors are fp32 master weights (autocast on GPU), as every erasebench method.
"""

from __future__ import annotations

import dataclasses

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from erasebench.api import Method, RunContext, Task
from erasebench.datafiles import resolve_data_path
from erasebench.erasure import Shadow, Trainer, check_choice, concept_token_ids, ddim_scheduler, encode
from erasebench.erasure import partial_ddim_sample, qualified, text_states
from erasebench.errors import ErasebenchError
from erasebench.methods.advunlearn import TE_GROUPS, select_text_encoder_parameters
from erasebench.registry import register_method

#: The reference draws random token ids below this (CLIP's vocabulary without its rarest merges).
RANDOM_TOKEN_LIMIT = 40905
#: Anchor templates of the reference's edit step (the typo "a image" is the reference's).
REFERENCE_TEMPLATES = ("a photo of {}", "a picture of {}", "a image of {}")


# -- concept lists ----------------------------------------------------------------------------------------------

def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def load_concept_file(path: str = "sgrace/concepts.yaml", data_path: Callable[[str], Path] = resolve_data_path
                      ) -> dict[str, dict[str, list[str]]]:
    """The shipped concept lists: concept key -> {"related": [...], "unrelated": [...]}."""
    import yaml

    with data_path(path).open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {str(k): {"related": [str(x) for x in v["related"]], "unrelated": [str(x) for x in v["unrelated"]]}
            for k, v in data["concepts"].items()}


def concept_lists(source: str, task: Task, concept: str, path: str = "sgrace/concepts.yaml",
                  data_path: Callable[[str], Path] = resolve_data_path) -> tuple[list[str], list[str]]:
    """(related, unrelated) concepts; related[0] is the erased concept itself, as in the reference.

    Args:
        source: ``file`` (the shipped lists, looked up by the task's concept key, then by its text) or ``task``
            (the task's erase-split prompts / preserve-split prompts).
    """
    if source == "file":
        table = load_concept_file(path, data_path)
        entry = table.get(task.concept) or table.get(_key(task.concept_text)) or table.get(_key(concept))
        if entry is None:
            raise ErasebenchError(f"sgrace: no concept lists for '{task.concept}' in {path}. Add them there, or "
                                  "set method.concept_lists=task to use the task's prompts.")
        related, unrelated = entry["related"], entry["unrelated"]
    else:
        related = [item.prompt for item in task.splits.get("erase", ())]
        unrelated = [item.prompt for item in task.splits.get("preserve", ())]
    related = _unique([concept, *related])
    low = concept.lower()
    unrelated = [u for u in _unique(unrelated) if u.lower() != low]
    if not unrelated:
        raise ErasebenchError(f"sgrace: no unrelated concepts for '{task.concept}' (source '{source}').")
    return related, unrelated


# -- adversarial prompts --------------------------------------------------------------------------------------

@dataclass
class AdvPrompt:
    """One adversarial prompt: ids [SOT, span (L tokens), EOT...] and the span's initial token embeddings."""

    ids: torch.Tensor          # [1, max_length]
    length: int                # L, the span length (the feature is read at position L: the last span token)
    init: torch.Tensor         # [1, L, D], the span's token embeddings
    text: str = ""


def _randint(n: int, high: int, gen: torch.Generator) -> list[int]:
    return torch.randint(high, (n,), generator=gen).tolist() if n > 0 else []


def make_prompt(tokenizer: Any, vocab: torch.Tensor, span: list[int], text: str = "") -> AdvPrompt:
    """The prompt whose span holds the token ids ``span`` (cut to max_length - 2 tokens)."""
    length = tokenizer.model_max_length
    span = span[: length - 2]
    ids = [tokenizer.bos_token_id, *span] + [tokenizer.eos_token_id] * (length - 1 - len(span))
    rows = torch.tensor(span, dtype=torch.long, device=vocab.device)
    return AdvPrompt(torch.tensor([ids]), len(span), vocab[rows].detach().float().unsqueeze(0).clone(), text)


def copycat_prompt(tokenizer: Any, vocab: torch.Tensor, words: Sequence[str], n_words: int, n_random: int,
                   gen: torch.Generator) -> AdvPrompt:
    """``n_random`` random token ids, then a comma-joined random sample of ``n_words`` of ``words``."""
    order = torch.randperm(len(words), generator=gen).tolist()[: max(1, min(n_words, len(words)))]
    text = ",".join(words[i] for i in order)
    body = concept_token_ids(tokenizer, text)
    room = tokenizer.model_max_length - 2 - n_random
    rand = _randint(n_random, min(RANDOM_TOKEN_LIMIT, vocab.shape[0]), gen)
    return make_prompt(tokenizer, vocab, rand + body[:room], text)


def target_prompt(tokenizer: Any, vocab: torch.Tensor, concept: str, gen: torch.Generator, n_random: int = 5
                  ) -> AdvPrompt:
    """The reference's ``target`` initialisation: 5 random token ids, then the concept's tokens."""
    rand = _randint(n_random, min(RANDOM_TOKEN_LIMIT, vocab.shape[0]), gen)
    return make_prompt(tokenizer, vocab, rand + concept_token_ids(tokenizer, concept), concept)


# -- features and losses ----------------------------------------------------------------------------------------

def load_projection(name: str, hidden: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The CLIP text projection P (``none``: identity), read from the local Hugging Face cache."""
    if name == "none":
        return lambda h: h
    from erasebench import weights

    folder = weights.require_hf(name, "method 'sgrace' (CLIP text projection)")
    weight = None
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("text_projection.weight")), None)
            weight = f.get_tensor(key) if key else None
    if weight is None:
        from transformers import CLIPModel

        weight = CLIPModel.from_pretrained(str(folder), local_files_only=True).text_projection.weight.detach()
    if weight.shape[1] != hidden:
        raise ErasebenchError(f"sgrace: the projection of '{name}' takes {weight.shape[1]} features, the text "
                              f"encoder gives {hidden}. Set method.projection=none or a matching CLIP model.")
    weight = weight.float().to(device)
    return lambda h: h.float() @ weight.T


def feature(states: torch.Tensor, position: int, projection: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """f(h, p) = P(h[:, p]) ([B, D'])."""
    return projection(states[:, position])


def cos_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity; b of one row is compared with every row of a (the reference's ``get_loss_clip``)."""
    return F.cosine_similarity(a.float(), b.float().expand_as(a), dim=-1).mean()


def adv_states(text_encoder: Any, prompts: Sequence[AdvPrompt], advs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The encoder's states of every adversarial prompt in one batch ([B, L, D]): prompt i's input word
    embeddings at positions 1..L_i are ``advs[i]`` (with gradients to it); position embeddings, causal mask and
    final layer norm are the encoder's own."""
    ids = torch.cat([p.ids for p in prompts]).to(text_encoder.device)

    def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cat([out[i, :1], a[0].to(out.dtype), out[i, 1 + a.shape[1]:]])
                            for i, a in enumerate(advs)])

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        return text_encoder(ids)[0]
    finally:
        handle.remove()


def adv_features(states: torch.Tensor, prompts: Sequence[AdvPrompt], token: str,
                 projection: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """f_i, read at the last span token (``last``, the reference) or the end token after it (``eot``)."""
    shift = 1 if token == "eot" else 0
    rows = torch.arange(len(prompts), device=states.device)
    cols = torch.tensor([p.length + shift for p in prompts], device=states.device)
    return projection(states[rows, cols])


def attack_loss(unet: Any, states: torch.Tensor, features: torch.Tensor, samples: dict[str, torch.Tensor],
                f_target: torch.Tensor, sim_weight: float) -> torch.Tensor:
    """The attacker's objective (minimised): mean ||z_T,j - eps(x_t,j, h_i, t_j)||^2 + w (1 - mean_i cos(f_i, f_c)),
    the mean over every prompt i and sample j (one UNet batch)."""
    z, x, t = samples["noise"], samples["x_t"], samples["t"]
    b, n = states.shape[0], x.shape[0]
    cond = states.to(x.dtype).repeat_interleave(n, dim=0)
    pred = unet(x.repeat(b, 1, 1, 1), t.repeat(b), encoder_hidden_states=cond).sample
    return F.mse_loss(pred.float(), z.float().repeat(b, 1, 1, 1)) + sim_weight * (1 - cos_mean(features, f_target))


def pgd_attack(unet: Any, text_encoder: Any, prompts: Sequence[AdvPrompt], samples: dict[str, torch.Tensor],
               f_target: torch.Tensor, projection: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float,
               sim_weight: float, token: str = "last", project: bool = False
               ) -> tuple[list[torch.Tensor], list[float]]:
    """Sign-gradient Adam on the adversarial spans against the current encoder (frozen during the attack).

    Returns:
        The adversarial spans (detached) and the attack loss of every step (before its update).
    """
    flags = {n: p.requires_grad for n, p in text_encoder.named_parameters()}
    text_encoder.requires_grad_(False)
    inits = [p.init.detach().float() for p in prompts]
    advs = [a.clone().requires_grad_(True) for a in inits]
    opts = [torch.optim.Adam([a], lr=lr) for a in advs]
    losses = []
    try:
        for _ in range(steps):
            states = adv_states(text_encoder, prompts, advs)
            loss = attack_loss(unet, states, adv_features(states, prompts, token, projection), samples, f_target,
                               sim_weight)
            grads = torch.autograd.grad(loss, advs)
            for a, g, opt in zip(advs, grads, opts):
                a.grad = g.sign()
                opt.step()
            if project:
                with torch.no_grad():
                    for a, a0 in zip(advs, inits):
                        a.copy_(torch.maximum(torch.minimum(a, a0 + 4 * lr), a0 - 4 * lr).clamp(a0.min(), a0.max()))
            losses.append(float(loss.detach()))
    finally:
        for n, p in text_encoder.named_parameters():
            p.requires_grad_(flags[n])
    return [a.detach() for a in advs], losses


def param_l1(params: dict[str, torch.nn.Parameter], originals: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over tensors of mean |phi - phi_0| (the reference's ``L1Loss`` per tensor, summed)."""
    return sum(F.l1_loss(p.float(), originals[n].to(p.device).float()) for n, p in params.items())


def anchor_loss(text_encoder: Any, ids: torch.Tensor, original_states: torch.Tensor) -> torch.Tensor:
    """mean((TE_phi(u) - TE_0(u))^2) over the full 77-token states of the anchor prompts."""
    return F.mse_loss(text_states(text_encoder, ids).float(), original_states.float())


def edit_loss(features: torch.Tensor, f_target: torch.Tensor, f_before: torch.Tensor, sim_weight: float
              ) -> torch.Tensor:
    """[mean_i cos(f_i, f_c) + 1] + w_sim [1 - mean_i cos(f_i, f0_i)]."""
    row = F.cosine_similarity(features.float(), f_before.float(), dim=-1).mean()
    return cos_mean(features, f_target) + 1 + sim_weight * (1 - row)


@register_method("sgrace")
class SGrace(Method):
    """Attack-then-edit rounds on the text encoder with CLIP-feature losses and three regularisers."""

    display_name = "S-GRACE"

    smoke_settings = {"rounds": 2, "edit_steps": 2, "attack_steps": 2, "adv_embeddings": 3, "ddim_steps": 4,
                      "anchor_count": 2, "random_tokens": 2, "concept_lists": "task", "projection": "none"}

    @dataclass
    class Config:
        """S-GRACE settings; defaults are ``configs/nudity.yml`` of Qhong-522/S-GRACE 0b5cc75.

        Attributes:
            rounds: Attack-then-edit rounds (``training_rounds``).
            edit_steps: Encoder Adam steps per round.
            lr: Encoder learning rate.
            train_group: ``full`` (encoder layers + final layer norm; the reference's ``base``), ``ffn``, ``attn``.
            attack_steps: Sign-Adam steps of the attack per round.
            attack_lr: Its learning rate.
            adv_embeddings: Number of adversarial prompts.
            attack_init: ``copycat`` (related-concept samples) or ``target`` (5 random tokens + the concept).
            update_chance: Probability to redraw an adversarial prompt's initialisation each round after the first.
            random_tokens: Random token ids before the related-concept sample (5 nudity, 3 tench, 0 Van Gogh).
            init_words_min: Smallest number of related concepts in a copycat sample.
            init_words_max: Largest (inclusive).
            attack_target_sim_weight: Weight of the attacker's CLIP-target-similarity term.
            attack_projection: Apply the PGD projection the reference writes but never applies (see deviations).
            sim_weight: Weight of the edit's similarity regulariser (to the adversarial features before the edit).
            anchor_weight: Weight of the anchor regulariser.
            anchor_count: Unrelated prompts per edit step.
            anchor_templates: Templates of the anchor prompts (``{}`` = the unrelated concept).
            param_weight: Weight of the L1 parameter regulariser.
            timestep_low: Lowest DDPM timestep of the attack's x_t (inclusive).
            timestep_high: Highest (exclusive).
            noisy_images: Starting noises z_T for x_t.
            timesteps_per_image: Timesteps drawn (one x_t per noise and timestep).
            few_shot: Draw x_t once (true, the reference) instead of every round.
            keep_attacked: A prompt that is not redrawn starts its next attack from its attacked value (true,
                the reference) instead of its initial one.
            ddim_steps: Length of the DDIM chain that makes x_t.
            start_guidance: Its CFG scale.
            xt_prompt_template: ``auto`` (by task kind, see deviations) or a template with ``{}``.
            concept_lists: ``file`` (the shipped lists) or ``task`` (the task's split prompts).
            concepts_file: The lists' file (in ``erasebench/data`` or a path).
            projection: CLIP repository whose ``text_projection`` gives the features, or ``none``.
            feature_token: ``last`` (last adversarial token; the reference) or ``eot``.
            prompt: The concept text to erase; empty means the task's.
        """

        rounds: int = 4
        edit_steps: int = 50
        lr: float = 1e-5
        train_group: str = "full"
        attack_steps: int = 10
        attack_lr: float = 5e-3
        adv_embeddings: int = 8
        attack_init: str = "copycat"
        update_chance: float = 0.8
        random_tokens: int = 5
        init_words_min: int = 3
        init_words_max: int = 10
        attack_target_sim_weight: float = 0.1
        attack_projection: bool = False
        sim_weight: float = 1.2
        anchor_weight: float = 1.2
        anchor_count: int = 16
        anchor_templates: list[str] = field(default_factory=lambda: list(REFERENCE_TEMPLATES))
        param_weight: float = 0.3
        timestep_low: int = 750
        timestep_high: int = 950
        noisy_images: int = 1
        timesteps_per_image: int = 1
        few_shot: bool = True
        keep_attacked: bool = True
        ddim_steps: int = 50
        start_guidance: float = 3.0
        xt_prompt_template: str = "auto"
        concept_lists: str = "file"
        concepts_file: str = "sgrace/concepts.yaml"
        projection: str = "openai/clip-vit-large-patch14"
        feature_token: str = "last"
        prompt: str = ""

        def __post_init__(self) -> None:
            check_choice("train_group", self.train_group, tuple(TE_GROUPS))
            check_choice("attack_init", self.attack_init, ("copycat", "target"))
            check_choice("concept_lists", self.concept_lists, ("file", "task"))
            check_choice("feature_token", self.feature_token, ("last", "eot"))
            if not 0 <= self.timestep_low < self.timestep_high <= 1000:
                raise ErasebenchError("sgrace: need 0 <= timestep_low < timestep_high <= 1000.")
            if not 1 <= self.init_words_min <= self.init_words_max:
                raise ErasebenchError("sgrace: need 1 <= init_words_min <= init_words_max.")
            if not self.anchor_templates or any("{}" not in t for t in self.anchor_templates):
                raise ErasebenchError("sgrace: every anchor template needs a '{}'.")

    def xt_prompt(self, task: Task, concept: str) -> str:
        """The prompt whose DDIM chain makes the attack's x_t."""
        template = self.config.xt_prompt_template
        if template == "auto":
            if task.erase_prompt and not self.config.prompt:
                return task.erase_text()
            template = {"style": "a picture of {}", "object": "a photo of {}"}.get(task.kind, "{}")
        return template.format(concept)

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """The text-encoder tensors of ``train_group`` and the final layer norm."""
        return qualified("text_encoder", select_text_encoder_parameters(pipe.text_encoder, self.config.train_group,
                                                                        norm_layer=True))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Train and return ``pipe`` with the S-GRACE-edited text encoder."""
        c = self.config
        unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
        unet.requires_grad_(False)
        te.requires_grad_(False)
        concept = c.prompt or task.erase_text()
        related, unrelated = concept_lists(c.concept_lists, task, concept, c.concepts_file, run.data_path)
        gen = torch.Generator().manual_seed(run.seed)
        vocab = te.get_input_embeddings().weight
        projection = load_projection(c.projection, te.config.hidden_size, run.device)

        # Everything the original encoder gives, computed before it changes.
        concept_ids = tok([concept], padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
        eot = min(1 + len(concept_token_ids(tok, concept)), tok.model_max_length - 1)
        with torch.no_grad():
            f_target = feature(text_states(te, concept_ids), eot, projection).detach()
        anchors = [t.format(u) for u in unrelated for t in c.anchor_templates]   # row = u * T + template
        anchor_ids = tok(anchors, padding="max_length", max_length=tok.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
        anchor_orig = torch.cat([encode(pipe, anchors[i:i + 64]) for i in range(0, len(anchors), 64)])
        emb_0, emb_xt = encode(pipe, [""]), encode(pipe, [self.xt_prompt(task, concept)])

        params = select_text_encoder_parameters(te, c.train_group, norm_layer=True)  # every group + final LN
        originals = Shadow(params).values
        sched = ddim_scheduler(pipe, c.ddim_steps)
        size = unet.config.sample_size
        shape = (unet.config.in_channels, size, size)
        n_anchor = min(c.anchor_count, len(unrelated))
        self.resolved = {"related_count": len(related), "unrelated_count": len(unrelated), "anchor_count": n_anchor,
                         "trained_tensors": len(params), "trained_parameters": sum(p.numel() for p in params.values()),
                         "xt_prompt": self.xt_prompt(task, concept)}
        trainer = Trainer(params, "adam", c.lr, c.rounds * c.edit_steps, desc="sgrace", loss_scale=1.0)

        def draw_samples() -> dict[str, torch.Tensor]:
            noise = torch.randn((c.noisy_images, *shape), generator=gen).to(run.device, unet.dtype)
            span = c.timestep_high - c.timestep_low
            ts = [c.timestep_low + i for i in torch.randperm(span, generator=gen)[: c.timesteps_per_image].tolist()]
            zs, xs, tt = [], [], []
            for t in ts:
                with trainer.autocast:
                    x, _ = partial_ddim_sample(unet, sched, noise, emb_xt.expand(len(noise), -1, -1),
                                               emb_0.expand(len(noise), -1, -1), c.start_guidance,
                                               int(t / 1000 * c.ddim_steps))
                zs.append(noise * sched.init_noise_sigma)
                xs.append(x)
                tt += [t] * len(noise)
            return {"noise": torch.cat(zs), "x_t": torch.cat(xs), "t": torch.tensor(tt, device=run.device)}

        def draw_prompt(first: bool) -> AdvPrompt:
            if c.attack_init == "target":
                return target_prompt(tok, vocab, concept, gen)
            if first:
                return copycat_prompt(tok, vocab, [concept], 1, 0, gen)
            return copycat_prompt(tok, vocab, related, n_words, c.random_tokens, gen)

        samples: dict[str, torch.Tensor] | None = None
        prompts: list[AdvPrompt] = []
        self.losses: list[float] = []
        self.attack_losses: list[list[float]] = []
        for r in range(c.rounds):
            n_words = int(torch.randint(c.init_words_min, c.init_words_max + 1, (1,), generator=gen))
            if r == 0:
                prompts = [draw_prompt(i == 0) for i in range(c.adv_embeddings)]
            else:
                prompts = [draw_prompt(False) if float(torch.rand(1, generator=gen)) < c.update_chance else p
                           for p in prompts]
            if samples is None or not c.few_shot:
                samples = draw_samples()
            with trainer.autocast:
                advs, att = pgd_attack(unet, te, prompts, samples, f_target, projection, c.attack_steps,
                                       c.attack_lr, c.attack_target_sim_weight, c.feature_token, c.attack_projection)
            self.attack_losses.append(att)
            if c.keep_attacked:
                prompts = [dataclasses.replace(p, init=a.detach().clone()) for p, a in zip(prompts, advs)]
            with torch.no_grad(), trainer.autocast:
                f_before = adv_features(adv_states(te, prompts, advs), prompts, c.feature_token, projection)
            for _ in range(c.edit_steps):
                rows = torch.randperm(len(unrelated), generator=gen)[:n_anchor]
                which = torch.randint(len(c.anchor_templates), (n_anchor,), generator=gen)
                idx = rows * len(c.anchor_templates) + which
                with trainer.autocast:
                    feats = adv_features(adv_states(te, prompts, advs), prompts, c.feature_token, projection)
                    loss = edit_loss(feats, f_target, f_before, c.sim_weight)
                    loss = loss + c.param_weight * param_l1(params, originals)
                    loss = loss + c.anchor_weight * anchor_loss(te, anchor_ids[idx], anchor_orig[idx])
                self.losses.append(trainer.step(loss))
        trainer.finish()
        self.adversarial_prompts = [p.text for p in prompts]
        return pipe
