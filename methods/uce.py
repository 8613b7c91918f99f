"""UCE: Unified Concept Editing in Diffusion Models (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

Paper: arXiv 2308.14761. Reference code: github.com/rohitgandikota/unified-concept-editing,
``trainscripts/uce_sd_erase.py`` at commit 28c81ed (the 2024 diffusers rewrite, the default here). The 2023
script, ``train-scripts/train_erase.py`` of the same repository (last version bd5fb51, removed by the rewrite
4502388; lamb 0.5 hard-coded), is ``tokens=tail`` below; RECE (github.com/CharlesGong12/RECE, 403a67f) starts
from it, through its copy ``erase_methods/train_uce.py`` (the same ``edit_model``).

A closed-form edit of every cross-attention key/value projection W (``attn2.to_k``, ``attn2.to_v``; eq. 7):

    W_new = (lamb W_old + s_e sum_i v_i* c_i^T + s_p sum_j v_j* c_j^T) (lamb I + s_e sum_i c_i c_i^T
             + s_p sum_j c_j c_j^T)^-1
    v_i* = W_old c_guide(i)   (erase: the concept's text state now projects like its guide's)
    v_j* = W_old c_j          (preserve: the preserved concepts keep their projections)

(:func:`erasebench.closed_form.solve_edit`, float64). No optimiser, no images: the edit takes well under a second.

Which text states (``tokens``):
    - ``last`` (2024 code, default): one state per prompt, the last real token (``attention_mask.sum() - 2``);
      for the empty guide "" that is the start token, as in the code.
    - ``tail`` (2023 code, the UCE of RECE's checkpoints): the concept's states from its last word token to the
      end of the 77-token sequence (the end token and the padding included), paired position by position with
      the guide's states from *its* last token on (both trimmed to the same length); the preserve set is every
      one of the 77 states of "" and of each preserved concept, "" always included.

Paper / code settings (the defaults): lamb 0.5, erase_scale 1, preserve_scale 1 (2024 script; the 2023 script
used max(0.1, 1 / number of preserved texts) when not given, ``preserve_scale: null`` here), guide "" for objects
and unsafe concepts, "art" for artistic styles (``guide: auto``), prompt expansion off. With expansion on, every
edit concept is also edited as "painting by X", "art by X", "artwork by X", "picture by X", "style of X" (styles)
or "image of X", "photo of X", "portrait of X", "picture of X", "painting of X" (others); the 2024 script expands
the guide the same way ("painting by art"), the 2023 script pairs them with the bare guide (``tokens=tail`` here).
Preserved concepts (``preserve``): the paper's artist experiments preserve other artists (the README's example
erases Van Gogh and Picasso, preserving Monet, Rembrandt and Warhol; the 2023 script preserved every other artist
of its 1,734-artist list); object and nudity edits preserve nothing. ``auto`` does that with the task's own
concepts: the task's other concepts for styles, none otherwise. ``task`` preserves the other concepts for every
kind, ``none`` none, anything else is a ``;``-separated list of prompts.

Toy world (conf/preset/toy_uce.yaml): the toy's frozen random text encoder carries the object in the padding
states, which ``tokens=last`` never edits; toy objects use ``tokens=tail`` with the other shapes preserved and
prompt expansion; toy styles the paper's ``tokens=last`` with the toy's generic word "shape" as guide ("art" is
not in the toy vocabulary). The preset files list every setting tried with its numbers.

Deviations from the reference code:
    - Preserved concepts are phrased like the erased one: when the task's erase prompt wraps the concept text
      (the toy world's "a circle" for "circle"), a preserved "square" becomes "a square"
      (:func:`concept_phrase`); a separate concept list (e.g. 1,734 artists) is not shipped.
    - The solve is float64 with ``torch.linalg.solve`` (the 2024 code inverts in float32).
    - Prompt expansion with ``tokens=tail`` on a nudity or unsafe task uses the object templates; the 2023
      script expands only art and object concepts.
    - The 2023 code's ``technique=tensor`` variant (targets with the concept's direction projected out) is not
      implemented; ``replace`` (the default of every script) is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from erasebench.api import Method, RunContext, Task
from erasebench.closed_form import EditGroup, kv_edit, kv_layers, states_and_lengths, token_states
from erasebench.erasure import check_choice, qualified
from erasebench.registry import register_method

#: Guide of ``guide: auto`` per task kind: the 2024 script's ("art" for --concept_type art, else ""). The 2023
#: script's own default is " " for every type; its README command passes "art" for artists, as here.
DEFAULT_GUIDE = {"style": "art"}
#: The scripts' prompt expansion (``--expand_prompts true``), per concept type ("art" templates for styles).
EXPANSIONS = {
    "style": ["painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"],
    "other": ["image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"],
}


def split_list(text: str) -> list[str]:
    """A ``;``-separated list, stripped (the UCE command-line format)."""
    return [t.strip() for t in text.split(";")]


def concept_phrase(task: Task, text: str) -> str:
    """``text`` phrased as the task phrases its erased concept (toy: "square" -> "a square"), else ``text``."""
    erase = task.erase_text()
    if task.erase_prompt and task.concept_text and task.concept_text in erase:
        return erase.replace(task.concept_text, text, 1)
    return text


def resolve_guide(guide: str, kind: str) -> str:
    """``auto``: "art" for styles, "" (unconditional) otherwise; any other value is the guide itself."""
    return DEFAULT_GUIDE.get(kind, "") if guide == "auto" else guide


def resolve_preserve(preserve: str, task: Task, edits: Sequence[str]) -> list[str]:
    """The preserved prompts: ``auto`` (other concepts for styles, none otherwise), ``task``, ``none``, or a list."""
    if preserve in ("auto", "task"):
        if preserve == "auto" and task.kind != "style":
            return []
        others = [concept_phrase(task, text) for key, text in task.concepts.items() if key != task.concept]
        return [p for p in others if p not in edits]
    if preserve in ("none", ""):
        return []
    return split_list(preserve)


def expand(edits: Sequence[str], guides: Sequence[str], kind: str, expand_guides: bool = True
           ) -> tuple[list[str], list[str]]:
    """The scripts' prompt expansion: each edit also as "painting by {}" ... (styles) / "image of {}" ...

    The 2024 script expands the guide alike ("painting by art"); the 2023 one (``expand_guides=False``) pairs
    every expanded edit with the bare guide.
    """
    templates = EXPANSIONS["style" if kind == "style" else "other"]
    new_e, new_g = list(edits), list(guides)
    for e, g in zip(edits, guides):
        new_e += [t.format(e) for t in templates]
        new_g += [t.format(g) if expand_guides else g for t in templates]
    return new_e, new_g


@torch.no_grad()
def encode_all(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 77-token text states [n, L, D] (float32) and attention-mask lengths [n] of ``prompts``."""
    return states_and_lengths(pipe, prompts)


@torch.no_grad()
def tail_pairs(pipe: Any, edits: Sequence[str], guides: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2023 script's aligned states: edit tokens from its last word on against the guide's from its last on."""
    inputs, targets = [], []
    for e, g in zip(edits, guides):
        states, lengths = encode_all(pipe, [e, g or " "])  # the 2023 code turns the guide "" into " "
        fe, fg = int(lengths[0]) - 2, int(lengths[1]) - 2
        far, n = max(fe, fg), states.shape[1]
        inputs.append(states[0, fe:n - (far - fe)])
        targets.append(states[1, fg:n - (far - fg)])
    return torch.cat(inputs), torch.cat(targets)


def uce_groups(pipe: Any, edits: Sequence[str], guides: Sequence[str], preserve: Sequence[str], tokens: str,
               erase_scale: float, preserve_scale: float | None) -> list[EditGroup]:
    """UCE's edit groups: erase (edit -> guide) and preserve, for ``tokens`` ``last`` (2024) or ``tail`` (2023)."""
    if tokens == "last":
        groups = [EditGroup(token_states(pipe, edits), token_states(pipe, guides), erase_scale)]
        if preserve:
            scale = 1.0 if preserve_scale is None else preserve_scale
            groups.append(EditGroup(token_states(pipe, preserve), None, scale))
        return groups
    retain = ["", *preserve]  # the 2023 script always keeps "" (every one of its 77 states)
    scale = max(0.1, 1 / len(retain)) if preserve_scale is None else preserve_scale  # unrounded, as the 2023 script
    inputs, targets = tail_pairs(pipe, edits, guides)
    return [EditGroup(inputs, targets, erase_scale), EditGroup(encode_all(pipe, retain)[0].flatten(0, 1), None, scale)]


def prompts_for(task: Task, prompt: str, guide: str, preserve: str, expand_prompts: bool, expand_guides: bool = True
                ) -> tuple[list[str], list[str], list[str]]:
    """(edits, guides, preserved) for a task: ``;`` lists, the per-kind guide, expansion, the preserve set."""
    edits = split_list(prompt) if prompt else [task.erase_text()]
    guides = split_list(resolve_guide(guide, task.kind))
    if len(guides) == 1:
        guides = guides * len(edits)
    if len(guides) != len(edits):
        raise ValueError(f"{len(guides)} guide concepts for {len(edits)} edit concepts (separate them with ';')")
    if expand_prompts:
        edits, guides = expand(edits, guides, task.kind, expand_guides)
    return edits, guides, resolve_preserve(preserve, task, edits)


def uce_edit(pipe: Any, edits: Sequence[str], guides: Sequence[str], preserve: Sequence[str], lamb: float,
             erase_scale: float = 1.0, preserve_scale: float | None = 1.0, tokens: str = "last"
             ) -> Mapping[str, torch.nn.Parameter]:
    """Apply UCE to ``pipe.unet`` in place; returns the edited ``attn2.to_k`` / ``attn2.to_v`` weights."""
    layers = kv_layers(pipe.unet)
    kv_edit(layers, uce_groups(pipe, edits, guides, preserve, tokens, erase_scale, preserve_scale), lamb)
    return layers


@register_method("uce")
class UCE(Method):
    """Closed-form edit of the cross-attention keys/values: the concept projects like its guide."""

    display_name = "UCE"

    smoke_settings: Mapping[str, Any] = {}  # closed form: the paper settings already run in milliseconds

    @dataclass
    class Config:
        """UCE settings; defaults are the paper's (``uce_sd_erase.py``, 28c81ed).

        Attributes:
            prompt: Concepts to erase, ``;``-separated; empty means the task's (``task.erase_text()``).
            guide: Guide concept(s), ``;``-separated, one for all or one per edit concept; ``auto``: "art" for
                styles, "" (unconditional) otherwise.
            preserve: ``auto`` (the task's other concepts for styles, none otherwise: the paper), ``task`` (the
                other concepts for every kind), ``none``, or a ``;``-separated list of prompts.
            erase_scale: s_e.
            preserve_scale: s_p; ``null``: 1 with ``tokens=last``, max(0.1, 1/n_retain) with ``tail`` (2023).
            lamb: lambda, the pull toward the original weight.
            expand_prompts: Also edit "painting by X", "art by X", ... (styles) / "image of X", ... (others).
            tokens: ``last`` (2024 code: the last token's state) or ``tail`` (2023 code: the last word's state
                and every state after it, paired with the guide's; RECE's starting point).
        """

        prompt: str = ""
        guide: str = "auto"
        preserve: str = "auto"
        erase_scale: float = 1.0
        preserve_scale: float | None = 1.0
        lamb: float = 0.5
        expand_prompts: bool = False
        tokens: str = "last"

        def __post_init__(self) -> None:
            check_choice("tokens", self.tokens, ("last", "tail"))

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """Every cross-attention key and value weight."""
        return qualified("unet", kv_layers(pipe.unet))

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Edit every ``attn2.to_k`` / ``attn2.to_v`` weight of ``pipe.unet`` in closed form."""
        c = self.config
        edits, guides, preserve = prompts_for(task, c.prompt, c.guide, c.preserve, c.expand_prompts,
                                              expand_guides=c.tokens == "last")
        self.prompts = {"erase": edits, "guide": guides, "preserve": preserve}
        uce_edit(pipe, edits, guides, preserve, c.lamb, c.erase_scale, c.preserve_scale, c.tokens)
        return pipe
