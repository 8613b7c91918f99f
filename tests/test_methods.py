"""Each method's loss on fixed tensors against an independent computation from the paper's formula."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import paper_method, task_of, trained_and_original

from erasebench.erasure import Shadow, Trainer, select_parameters
from erasebench.methods import abconcept, esd, sdd


def test_esd_loss_matches_formula_with_a_real_frozen_copy(tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    original, params, frozen = trained_and_original(unet, "xattn")
    z, t, e0c, epc = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"]
    eta = 2.0
    loss = esd.esd_loss(unet, frozen, z, t, e0c, epc, eta)
    with torch.no_grad():
        e_0 = original(z, t, encoder_hidden_states=e0c).sample
        e_p = original(z, t, encoder_hidden_states=epc).sample
        e_n = unet(z, t, encoder_hidden_states=epc).sample
    expected = ((e_n - (e_0 - eta * (e_p - e_0))) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0
    loss.backward()  # gradients reach the trained tensors only through eps_theta(x_t, c, t)
    assert all(p.grad is not None for p in params.values())


def test_sdd_loss_matches_formula_and_stops_the_gradient(tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    params = select_parameters(unet, "xattn")
    z, t, e0c, esc = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"]
    loss = sdd.sdd_loss(unet, z, t, e0c, esc)
    with torch.no_grad():
        expected = ((unet(z, t, encoder_hidden_states=esc).sample - unet(z, t, encoder_hidden_states=e0c).sample)
                    ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    target = unet(z, t, encoder_hidden_states=e0c).sample.detach()  # gradient only through the concept branch
    ((unet(z, t, encoder_hidden_states=esc).sample - target) ** 2).mean().backward()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, grads[n])


def test_sdd_ema_teacher_update() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    teacher = Shadow({"w": p})
    with torch.no_grad():
        p.fill_(1.0)
    teacher.update_ema(0.999)
    torch.testing.assert_close(teacher.values["w"], torch.full((3,), 0.001))
    teacher.copy_to_params()
    torch.testing.assert_close(p.data, torch.full((3,), 0.001))


@pytest.mark.parametrize("variant", ["model", "noise"])
def test_abconcept_loss_matches_formula(variant: str, tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    z, t, e_a, e_t, noise = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"], fixed["noise"]
    mask = abconcept.border_mask(16, torch.device("cpu"))
    loss = abconcept.abconcept_loss(unet, z, t, e_t, e_a, noise, mask, variant)
    with torch.no_grad():
        pred = unet(z, t, encoder_hidden_states=e_t).sample
        target = unet(z, t, encoder_hidden_states=e_a).sample if variant == "model" else noise
    # concept-ablation diffusers/train.py @ c11fb1b ~1149: F.mse_loss(reduction="none"), then
    # ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean() with a one-channel [B, 1, H, W] mask
    one_channel = torch.zeros(2, 1, 16, 16)
    one_channel[..., 1:-1, 1:-1] = 1
    per_element = torch.nn.functional.mse_loss(pred, target, reduction="none")
    reference = ((per_element * one_channel).sum([1, 2, 3]) / one_channel.sum([1, 2, 3])).mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    inner = (pred - target)[..., 1:-1, 1:-1]  # 4 latent channels: 4x the per-element mean of the unmasked part
    assert loss.item() == pytest.approx(4 * (inner ** 2).mean().item(), rel=1e-5)


def test_abconcept_target_captions() -> None:
    import random

    rng = random.Random(0)
    assert abconcept.target_caption("a photo of a dog", "dog", "grumpy cat", "object", rng) == \
        "a photo of a grumpy cat"
    style = abconcept.target_caption("a painting of a harbour", "painting", "Van Gogh", "style", rng)
    assert style in {"a painting of a harbour, in the style of Van Gogh", "in Van Gogh's style, a painting of a harbour"}


def test_trainer_updates_only_the_selected_group(tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    params = select_parameters(unet, "xattn_kv")
    trainer = Trainer(params, "adam", 1e-3, 1, desc="test")
    trainer.step(sdd.sdd_loss(unet, fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"]))
    trainer.finish()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(params) and all(".attn2.to_" in n for n in changed)


def test_trainer_stops_on_nan(tiny_pipe: Any) -> None:
    from erasebench.errors import ErasebenchError

    params = select_parameters(tiny_pipe.unet, "xattn_kv")
    trainer = Trainer(params, "adam", 1e-3, 2, desc="test")
    with pytest.raises(ErasebenchError, match="diverged"):
        trainer.step(torch.tensor(float("nan"), requires_grad=True))


def test_trainer_divergence_check_measures_against_loss_scale(tiny_pipe: Any) -> None:
    """A loss that starts at ~0 may grow 1e4-fold without stopping when loss_scale says losses of ~1 are normal."""
    from erasebench.errors import ErasebenchError

    params = select_parameters(tiny_pipe.unet, "xattn_kv")
    w = next(iter(params.values()))
    tiny = lambda v: (w.sum() * 0 + v)  # noqa: E731  (a loss with a graph through the trained tensors)
    strict = Trainer(params, "adam", 0.0, 2, desc="test")
    strict.step(tiny(1e-6))
    with pytest.raises(ErasebenchError, match="diverged"):
        strict.step(tiny(0.5))  # 5e5 x the first loss
    scaled = Trainer(params, "adam", 0.0, 3, desc="test", loss_scale=1.0)
    scaled.step(tiny(1e-6))
    assert scaled.step(tiny(0.5)) == pytest.approx(0.5)
    with pytest.raises(ErasebenchError, match="diverged"):
        scaled.step(tiny(2e4))  # past 1e4 x the scale


def test_encode_builds_no_graph_through_a_trainable_text_encoder(tiny_pipe: Any) -> None:
    from erasebench.erasure import encode

    tiny_pipe.text_encoder.requires_grad_(True)   # methods that train it (AdvUnlearn, S-GRACE) leave it so
    emb = encode(tiny_pipe, ["a cat"])
    assert not emb.requires_grad and emb.grad_fn is None


def test_esd_float64_training_runs_in_double_and_casts_back(tiny_pipe: Any, tmp_path: Any) -> None:
    import copy

    from conftest import cached_run_context


    task = task_of()
    fp32_pipe, original = copy.deepcopy(tiny_pipe), copy.deepcopy(tiny_pipe.unet.state_dict())
    seen: set[torch.dtype] = set()
    tiny_pipe.unet.register_forward_pre_hook(lambda _m, args: seen.add(args[0].dtype))
    for pipe, dtype in ((tiny_pipe, "float64"), (fp32_pipe, "model")):
        method = paper_method("esd", train_dtype=dtype)
        method.erase(pipe, task, cached_run_context(pipe, tmp_path))
    assert seen == {torch.float64}  # the sampling chain and all three predictions ran in double precision
    assert {p.dtype for p in tiny_pipe.unet.parameters()} == {p.dtype for p in tiny_pipe.text_encoder.parameters()} \
        == {torch.float32}
    moved = [n for n, v in tiny_pipe.unet.state_dict().items() if not torch.equal(v, original[n])]
    assert moved  # it trained
    for n in moved:  # ... the same algorithm as in fp32, to fp32 rounding
        torch.testing.assert_close(tiny_pipe.unet.state_dict()[n], fp32_pipe.unet.state_dict()[n], rtol=1e-3, atol=1e-6)
