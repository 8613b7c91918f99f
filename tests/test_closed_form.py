"""The shared closed-form cross-attention edit (UCE eq. 7) against the explicit formula and its properties."""

from __future__ import annotations

import torch

from erasebench.closed_form import EditGroup, kv_edit, kv_layers, solve_edit, token_states


def _w_c(out: int = 6, d: int = 5, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_solve_matches_uce_equation_7() -> None:
    w, c, guide = _w_c()
    keep = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    lamb, s_e, s_p = 0.5, 1.0, 0.3
    got = solve_edit(w, [EditGroup(c, guide, s_e), EditGroup(keep, None, s_p)], lamb)
    w64, c64, g64, k64 = (x.double() for x in (w, c, guide, keep))
    mat1 = lamb * w64 + s_e * (w64 @ g64.T) @ c64 + s_p * (w64 @ k64.T) @ k64
    mat2 = lamb * torch.eye(5, dtype=torch.float64) + s_e * c64.T @ c64 + s_p * k64.T @ k64
    torch.testing.assert_close(got.double(), mat1 @ torch.inverse(mat2), rtol=1e-6, atol=1e-8)


def test_preserve_only_edit_keeps_the_weight_and_a_strong_erase_hits_the_target() -> None:
    w, c, guide = _w_c()
    torch.testing.assert_close(solve_edit(w, [EditGroup(c, None, 1.0)], 0.5), w, rtol=1e-5, atol=1e-5)
    # With a tiny lambda and as many constraints as directions allow, the erased states map to the guide's outputs.
    new = solve_edit(w, [EditGroup(c, guide, 1.0)], 1e-8)
    torch.testing.assert_close(c @ new.T, guide @ w.T, rtol=1e-4, atol=1e-4)
    # ... and with lambda large the edit vanishes.
    torch.testing.assert_close(solve_edit(w, [EditGroup(c, guide, 1.0)], 1e8), w, rtol=1e-5, atol=1e-5)


def test_kv_edit_touches_only_cross_attention_key_value(tiny_pipe) -> None:  # type: ignore[no-untyped-def]
    unet = tiny_pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    layers = kv_layers(unet)
    assert layers and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in layers)
    c = token_states(tiny_pipe, ["a circle"])
    guide = token_states(tiny_pipe, [""], which="eot")
    assert c.shape == guide.shape == (1, unet.config.cross_attention_dim)
    kv_edit(layers, [EditGroup(c, guide, 1.0)], 0.5)
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(layers)
