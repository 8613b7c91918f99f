"""Closed-form edits of the cross-attention key/value projections, written once for UCE and its heirs.

UCE (Gandikota et al., WACV 2024, eq. 7) rewrites every ``attn2.to_k`` / ``attn2.to_v`` weight W (out x D)
so that chosen text states c_i map to chosen outputs v_i*, while W stays close to the original:

    W_new = (lambda W_old + sum_g s_g V*_g C_g^T) (lambda I + sum_g s_g C_g C_g^T)^-1

where each *group* g holds input states C_g (D x n_g), their targets V*_g (out x n_g) and a scale s_g.
RECE, RealEra's first stage and TRCE's first stage are the same solve with other groups, so a method states
its groups and :func:`kv_edit` does the rest:

- an *erase* group maps the concept's states to what the original weights make of a guide's states
  (v* = W_old c_guide): ``EditGroup(inputs=c_concept, targets=c_guide, scale=s_e)``;
- a *preserve* group keeps the original outputs (v* = W_old c_j): ``EditGroup(inputs=c_keep, scale=s_p)``.

Targets are given in the text-state space and mapped through each layer's weight as it is before this solve
(the original model's for UCE; the current, already edited one for a RECE epoch), as the reference codes do.
The solve runs in float64 (the 768 x 768 system of SD is ill-conditioned when lambda is small) and the result
is cast back to the layer's dtype; no optimiser is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from erasebench.erasure import select_parameters


@dataclass(frozen=True)
class EditGroup:
    """One term of the closed-form edit.

    Attributes:
        inputs: Text states c, shape [n, D] (D: the cross-attention dim).
        targets: States whose original projection is the wanted output, [n, D]; ``None`` keeps the
            original output of ``inputs`` (a preserve term).
        scale: The group's weight s_g (UCE's erase_scale / preserve_scale).
    """

    inputs: torch.Tensor
    targets: torch.Tensor | None = None
    scale: float = 1.0


def kv_layers(unet: Any, group: str = "xattn_kv") -> dict[str, torch.nn.Parameter]:
    """The weights a closed-form edit rewrites: every ``attn2.to_k`` / ``attn2.to_v`` by default."""
    return {n: p for n, p in select_parameters(unet, group).items() if n.endswith(".weight")}


@torch.no_grad()
def solve_edit(w_old: torch.Tensor, groups: Sequence[EditGroup], lamb: float) -> torch.Tensor:
    """UCE's closed form for one weight ``w_old`` (out x D); returns W_new with ``w_old``'s dtype and device."""
    w = w_old.detach().to(torch.float64)
    lhs = lamb * w                                              # lambda W_old + sum s V* C^T
    gram = lamb * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)  # lambda I + sum s C C^T
    for g in groups:
        c = g.inputs.detach().to(w.device, torch.float64).reshape(-1, w.shape[1])
        t = c if g.targets is None else g.targets.detach().to(w.device, torch.float64).reshape(-1, w.shape[1])
        if t.shape != c.shape:
            raise ValueError(f"EditGroup targets {tuple(t.shape)} do not match inputs {tuple(c.shape)}")
        v_star = t @ w.T                                        # [n, out]: original outputs of the targets
        lhs += g.scale * v_star.T @ c
        gram += g.scale * c.T @ c
    # W_new = lhs @ gram^-1; gram is symmetric, so solve gram X = lhs^T and transpose (no explicit inverse).
    return torch.linalg.solve(gram, lhs.T).T.to(w_old.dtype)


@torch.no_grad()
def kv_edit(layers: Mapping[str, torch.nn.Parameter], groups: Sequence[EditGroup], lamb: float) -> None:
    """Rewrite every weight in ``layers`` in place with :func:`solve_edit` (all from their original values)."""
    for p in layers.values():
        p.data = solve_edit(p.data, groups, lamb)


@torch.no_grad()
def states_and_lengths(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 77-token text states [n, L, D] (float32) of ``prompts`` and their attention-mask lengths [n]
    (start + words + end), the input every closed-form method picks its tokens from."""
    tok = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].float(), tok.attention_mask.sum(dim=1)


@torch.no_grad()
def token_states(pipe: Any, prompts: Sequence[str], which: str = "last") -> torch.Tensor:
    """Text-encoder states of ``prompts`` at chosen tokens, as UCE feeds them to :func:`kv_edit`.

    Args:
        pipe: A Stable-Diffusion-like pipeline (tokenizer, text_encoder).
        prompts: The prompts.
        which: ``"last"``: the last real token of each prompt (UCE's 2024 code, ``attention_mask.sum() - 2``),
            shape [n, D]; ``"eot"``: the end-of-text token after it (TRCE's [EoT]), [n, D]; ``"all"``: every
            real token after the start token, concatenated, [sum of lengths, D] (no reference code uses it: UCE's
            first version and RECE take all 77 states, position by position).
    """
    states, lengths = states_and_lengths(pipe, prompts)
    rows = []
    for i, n in enumerate(lengths.tolist()):
        if which == "last":
            rows.append(states[i, n - 2:n - 1])
        elif which == "eot":
            rows.append(states[i, n - 1:n])
        elif which == "all":
            rows.append(states[i, 1:n - 1])
        else:
            raise ValueError(f"which must be 'last', 'eot' or 'all', not '{which}'")
    return torch.cat(rows).float()
