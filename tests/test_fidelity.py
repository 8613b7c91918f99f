"""Fidelity to each method's official code: the reference rule written out step by step, from the official
source (file and commit named per test), against erasebench's implementation on the same inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from erasebench.methods import sdd

from erasebench.erasure import esd_timesteps, partial_ddim_sample, select_parameters

# --- ESD (rohitgandikota/erasing, train-scripts/train-esd.py and ldm/models/diffusion/ddim.py @ a2189e9) ---

def _compvis_partial_sample(eps: Any, x: torch.Tensor, t_enc: int, guidance: float, n: int = 50) -> torch.Tensor:
    """train-esd.py's ``quick_sample_till_t`` written out from CompVis ``ddim.py`` (rohitgandikota/erasing a2189e9).

    ``make_ddim_timesteps`` gives [1, 21, ..., 981]; ``ddim_sampling`` slices ``timesteps[:t_start]`` with the
    default t_start = -1, walks the rest from the top and breaks when ``index + 1 == till_T``.
    """
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    ddim_ts = [t + 1 for t in range(0, 1000, 1000 // n)]
    alphas = [acp[t] for t in ddim_ts]
    alphas_prev = [acp[0]] + [acp[t] for t in ddim_ts[:-1]]
    timesteps = ddim_ts[:-1]
    total = len(timesteps)
    x = x.double()
    for i, step in enumerate(reversed(timesteps)):
        index = total - i - 1
        e_u, e_c = eps(x, step, 0.0), eps(x, step, 1.0)
        e = e_u + guidance * (e_c - e_u)
        pred_x0 = (x - (1 - alphas[index]).sqrt() * e) / alphas[index].sqrt()
        x = alphas_prev[index].sqrt() * pred_x0 + (1 - alphas_prev[index]).sqrt() * e
        if index + 1 == t_enc:
            break
    return x


class _FakeUNet:
    """eps(x, t, c): smooth in x and t, different per prompt embedding c (its mean)."""

    def __call__(self, x: torch.Tensor, t: Any, encoder_hidden_states: torch.Tensor) -> Any:
        c = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1).to(x.dtype)
        out = 0.3 * x * torch.cos(torch.as_tensor(float(t)) / 150) + 0.2 * c + 0.05 * torch.sin(3 * x)
        return type("Out", (), {"sample": out})()


def test_esd_compvis_chain_matches_the_compvis_sampler_for_every_t_enc() -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(50)
    fake = _FakeUNet()
    uncond, cond = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    g, seen = torch.Generator().manual_seed(0), set()
    while len(seen) < 50:
        steps, t = esd_timesteps(50, "compvis", g)
        t_enc = t // 20
        assert 20 * t_enc <= t < 20 * t_enc + 20
        if t_enc in seen:
            continue
        seen.add(t_enc)
        ours, _ = partial_ddim_sample(fake, sched, start.double(), cond, uncond, 3.0, steps)
        ref = _compvis_partial_sample(lambda x, s, c: fake(x, s, torch.full((1, 2, 3), c)).sample, start, t_enc, 3.0)
        assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5, t_enc  # float32 schedule
    steps, t = esd_timesteps(50, "consistent", g)
    assert steps.start == 0 and 0 <= steps.stop < 50 and t == -1


# --- SDD (nannullna/safe-diffusion, train_sdd.py @ a2e820c) ---

def _sdd_gather_parameters(method: str, names: list[str]) -> list[str]:
    """``gather_parameters`` of train_sdd.py, condition by condition."""
    out = []
    for name in names:
        if method == "full":
            out.append(name)
        elif method == "selfattn":
            if "attn1" in name:
                out.append(name)
        elif method == "xattn":
            if "attn2" in name:
                out.append(name)
        elif method == "noxattn":
            if name.startswith("conv_out.") or ("time_embed" in name):
                continue
            elif "attn2" in name:  # noqa: SIM114 (as the reference writes it)
                continue
            out.append(name)
        elif method == "notime":
            if name.startswith("conv_out.") or ("time_embed" in name):
                continue
            out.append(name)
    return out


@pytest.mark.parametrize("method", ["full", "selfattn", "xattn", "noxattn", "notime"])
def test_sdd_parameter_groups_are_the_reference_ones(tiny_pipe: Any, method: str) -> None:
    names = [n for n, _ in tiny_pipe.unet.named_parameters()]
    expected = _sdd_gather_parameters(method, names)
    assert expected  # the tiny UNet has tensors of every group
    sdd.SDD.Config(train_method=method)  # a valid choice
    assert sorted(select_parameters(tiny_pipe.unet, method, sdd.SDD_GROUPS)) == sorted(expected)
