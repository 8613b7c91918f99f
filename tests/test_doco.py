"""DoCo: the concept-preserving gradient surgery against hand computations, the PatchGAN discriminator and its
losses against the BCE formula, and one erase step on the tiny model (only the trained tensors change)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cached_run_context, paper_method, task_of
from erasebench.methods import doco

from erasebench.erasure import select_parameters
from erasebench.errors import ConfigError


def _method(**kwargs: Any) -> doco.DoCo:
    return paper_method("doco", smoke=False, **kwargs)  # paper settings, no toy preset


# ---------------------------------------------------------------- gradient surgery

def test_project_removes_exactly_the_conflicting_component() -> None:
    g = torch.tensor([[3.0, -4.0], [1.0, 2.0]])          # <g, p> = 3 - 8 = -5 < 0: conflicts
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]])           # |p| = sqrt(5), p^ = p / sqrt(5)
    (out,) = doco.adjust_gradient([g], [p], mode="project")
    # hand: g - <g, p^> p^ = g - (-5 / sqrt 5) p / sqrt 5 = g + p
    torch.testing.assert_close(out, torch.tensor([[4.0, -2.0], [1.0, 2.0]]))
    assert abs(float((out * p).sum())) < 1e-5             # nothing left along p
    # lambda scales the removed part: g + 0.5 p
    (half,) = doco.adjust_gradient([g], [p], lam=0.5, mode="project")
    torch.testing.assert_close(half, g + 0.5 * p)


def test_reference_subtracts_cos_times_unit_preservation_gradient() -> None:
    g = torch.tensor([0.0, -0.5])                         # |g| = 0.5, not 1: reference differs from projection
    p = torch.tensor([3.0, 4.0])                          # p^ = (0.6, 0.8); cos = -0.8
    (out,) = doco.adjust_gradient([g], [p], mode="reference")
    # hand: g - cos p^ = (0, -0.5) + 0.8 (0.6, 0.8) = (0.48, 0.14); the projection would give (0.24, -0.18)
    torch.testing.assert_close(out, torch.tensor([0.48, 0.14]))
    (proj,) = doco.adjust_gradient([g], [p], mode="project")
    torch.testing.assert_close(proj, torch.tensor([0.24, -0.18]))
    # for a unit-norm gradient the two agree
    u = torch.tensor([0.0, -1.0])
    a, b = doco.adjust_gradient([u], [p], mode="reference")[0], doco.adjust_gradient([u], [p], mode="project")[0]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["reference", "project"])
def test_non_conflicting_gradients_are_unchanged_per_tensor(mode: str) -> None:
    g1, p1 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, 1.0])     # aligned
    g2, p2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])               # orthogonal
    g3, p3 = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.0])              # conflicting
    out = doco.adjust_gradient([g1, g2, g3], [p1, p2, p3], mode=mode)
    assert torch.equal(out[0], g1) and torch.equal(out[1], g2)
    torch.testing.assert_close(out[2], torch.tensor([0.0, 1.0]) if mode == "project" else
                               torch.tensor([1.0 - 2 ** -0.5, 1.0]))


def test_clip_total_norm_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=gen) * 3, torch.randn(5, generator=gen)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for p, c in zip(params, doco.clip_total_norm(grads, 1.0)):
        torch.testing.assert_close(c, p.grad)


# ---------------------------------------------------------------- discriminator and GAN losses

def test_discriminator_is_a_patch_discriminator() -> None:
    torch.manual_seed(0)
    sd = doco.PatchDiscriminator(4, doco.auto_blocks(64))
    assert doco.auto_blocks(64) == 4 and doco.auto_blocks(8) == 1 and doco.auto_blocks(16) == 2
    assert sd(torch.randn(2, 4, 64, 64)).shape == (2, 1, 3, 3)          # the reference's map on SD latents
    toy = doco.PatchDiscriminator(4, doco.auto_blocks(8))
    assert toy(torch.randn(3, 4, 8, 8)).shape == (3, 1, 3, 3)
    # a patch's logit sees only part of the input: changing one corner leaves the far patch unchanged
    toy.eval()
    x = torch.randn(1, 4, 8, 8)
    y = x.clone()
    y[..., 0, 0] += 5
    a, b = toy(x), toy(y)
    assert not torch.allclose(a[..., 0, 0], b[..., 0, 0]) and torch.allclose(a[..., 2, 2], b[..., 2, 2])


def test_gan_losses_follow_the_bce_formula() -> None:
    torch.manual_seed(0)
    disc = doco.PatchDiscriminator(4, 1).eval()
    real, fake = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True)
    dr, df = disc(real).detach(), disc(fake).detach()

    def bce(logit: torch.Tensor, label: float) -> torch.Tensor:  # mean over the patch map, written out
        s = torch.sigmoid(logit)
        return -(label * torch.log(s) + (1 - label) * torch.log(1 - s)).mean()

    torch.testing.assert_close(doco.discriminator_loss(disc, real, fake), bce(dr, 0.0) + bce(df, 1.0))
    loss_g = doco.generator_loss(disc, fake)
    torch.testing.assert_close(loss_g, bce(df, 0.0))
    # the generator loss reaches the generator's output; the discriminator loss does not
    assert loss_g.requires_grad
    disc.zero_grad()
    doco.discriminator_loss(disc, real, fake).backward()
    assert fake.grad is None


def test_predict_x0_inverts_q_sample() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 400, 999])
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(doco.predict_x0(eps, x_t, t, sched.alphas_cumprod), x0, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- one erase run on tiny

def test_erase_changes_only_the_trained_tensors(tiny_pipe: Any, tmp_path: Path) -> None:
    run = cached_run_context(tiny_pipe, tmp_path)
    task = task_of()
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    text_before = copy.deepcopy(tiny_pipe.text_encoder.state_dict())
    trained = set(select_parameters(tiny_pipe.unet, "xattn_kv"))
    method = _method(steps=3, warm_up=1, num_anchor_images=4, batch_size=2)
    method.erase(tiny_pipe, task, run)
    after = tiny_pipe.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trained and all(".attn2.to_" in k for k in changed)
    assert all(torch.equal(v, tiny_pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())
    # DoCo train.py @ ebf6ff4 ~1239: the UNet steps only `if global_step > args.warm_up` (global_step from 0)
    assert ["adv" in log for log in method.losses] == [step > 1 for step in range(3)]


@pytest.mark.slow
def test_warm_up_only_leaves_the_unet_unchanged(tiny_pipe: Any, tmp_path: Path) -> None:
    run = cached_run_context(tiny_pipe, tmp_path)
    task = task_of()
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    method = _method(steps=2, warm_up=2, num_anchor_images=4, batch_size=2)
    method.erase(tiny_pipe, task, run)
    assert all(torch.equal(v, tiny_pipe.unet.state_dict()[k]) for k, v in before.items())
    assert len(method.losses) == 2 and all(set(d) == {"disc"} for d in method.losses)


def test_config_rejects_bad_choices() -> None:
    with pytest.raises(ConfigError):
        doco.DoCo.Config(surgery="pcgrad")
    with pytest.raises(ConfigError):
        doco.DoCo.Config(parameter_group="kv")
    with pytest.raises(ConfigError):
        doco.DoCo.Config(steps=10, warm_up=11)
