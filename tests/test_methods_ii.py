"""AdvAnchor, AdvUnlearn and All-but-One: losses on fixed tensors against independent computations, the
AdvAnchor stopping rule and strategies, the AdvUnlearn attack and its portable text encoder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cached_run_context, paper_method, task_of, trained_and_original
from erasebench.methods import advanchor, advunlearn, allbutone

from erasebench.api import RunContext
from erasebench.erasure import Shadow, Trainer, select_parameters
from erasebench.generate import weight_digests


def _ctx(tmp_path: Path, pipe: Any) -> RunContext:
    return cached_run_context(pipe, tmp_path)


def _method(cls: Any, **kwargs: Any) -> Any:
    return paper_method(cls.name, smoke=False, **kwargs)


def _unet(e: Any) -> Any:
    return e.sample


# ---------------------------------------------------------------- AdvAnchor


@pytest.mark.parametrize("variant", ["adv1", "adv2"])
@pytest.mark.parametrize("sim", ["cosine", "mean_product"])
def test_advanchor_adv_loss_matches_formula(variant: str, sim: str, tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    z, t, e_g, e_c = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"]
    e_anchor = (fixed["emb_a"] * 0.1 + e_c).requires_grad_(True)
    loss = advanchor.adv_loss(unet, z, t, e_anchor, e_c, e_g, variant, sim)
    with torch.no_grad():
        a, c, g = (unet(z, t, encoder_hidden_states=e).sample for e in (e_anchor, e_c, e_g))
    if variant == "adv2":
        a, c = a - g, c - g
    if sim == "cosine":
        expected = sum((a[i] * c[i]).sum() / (a[i].norm() * c[i].norm()) for i in range(2)) / 2
    else:
        expected = (a * c).sum() / a.numel() / 2   # the code's mean product over (1 + o) terms, o = 1 (--ori_flag)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    (grad,) = torch.autograd.grad(loss, e_anchor)  # the anchor embedding (hence delta) gets the gradient
    assert grad.abs().sum() > 0


def test_advanchor_unlearn_loss_matches_formula_with_a_real_frozen_copy(tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    original, params, frozen = trained_and_original(unet, "xattn")
    z, t, e_g, e_c, e_a = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"], fixed["emb_a"]
    loss = advanchor.unlearn_loss(unet, frozen, z, t, e_c, e_a, e_g, lam=10.0)
    with torch.no_grad():
        target_a = original(z, t, encoder_hidden_states=e_a).sample
        target_g = original(z, t, encoder_hidden_states=e_g).sample
        pred_c = unet(z, t, encoder_hidden_states=e_c).sample
        pred_g = unet(z, t, encoder_hidden_states=e_g).sample
    expected = ((pred_c - target_a) ** 2).mean() + 10.0 * ((pred_g - target_g) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_advanchor_stopping_rule_ends_the_inner_loop_when_the_similarity_turns_negative() -> None:
    delta = torch.zeros(1, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.01)  # each Adam step moves delta by ~lr
    steps: list[float] = []
    losses = advanchor.optimise_delta(lambda d: d.sum() + 0.035, delta, opt, max_steps=30, on_step=steps.append)
    assert losses[-1] < 0 and all(v >= 0 for v in losses[:-1])  # stopped at the first negative loss
    assert len(losses) == 5 and len(steps) == 4  # 4 steps taken, the 5th evaluation stopped the loop
    assert delta.item() == pytest.approx(-0.04, abs=1e-4)  # no step after the negative loss


def test_advanchor_inner_loop_in_the_method_obeys_the_rule(tiny_pipe: Any, tmp_path: Path) -> None:
    # L_adv2 with a large lr reaches < 0 within a few steps on the random tiny model
    method = _method(advanchor.AdvAnchor, adv_loss="adv2", steps=2, inner_steps=12, delta_lr=0.5)
    method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    for losses in method.adv_losses:
        assert all(v >= 0 for v in losses[:-1])
        assert losses[-1] < 0 or len(losses) == 12
    assert any(losses[-1] < 0 for losses in method.adv_losses)  # the rule fired at least once


@pytest.mark.parametrize("strategy, expected", [
    ("op1", [("delta", 0), ("delta", 0), ("unet", 0), ("delta", 1), ("delta", 1), ("unet", 1),
             ("delta", 2), ("delta", 2), ("unet", 2)]),
    ("op2", [("delta", 0), ("delta", 0), ("delta", 1), ("delta", 1), ("delta", 2), ("delta", 2),
             ("unet", 0), ("unet", 1), ("unet", 2)]),
    ("op3", [("delta", 0), ("delta", 1), ("delta", 2), ("delta", 0), ("delta", 1), ("delta", 2),
             ("unet", 0), ("unet", 1), ("unet", 2)]),
])
def test_advanchor_strategies_order_delta_and_weight_updates(strategy: str, expected: list, tiny_pipe: Any,
                                                             tmp_path: Path) -> None:
    # delta starts at ~1e-7, so the anchor predicts like the concept (similarity ~1) and no early stop fires.
    method = _method(advanchor.AdvAnchor, strategy=strategy, steps=3, inner_steps=2)
    method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    assert method.trace == expected


def test_advanchor_delta_covers_the_real_concept_tokens(tiny_pipe: Any, tmp_path: Path) -> None:
    method = _method(advanchor.AdvAnchor, steps=1, inner_steps=1, delta_space="token_input")
    method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    n = len(advunlearn.concept_token_ids(tiny_pipe.tokenizer, "cat"))
    prefix = len(advunlearn.concept_token_ids(tiny_pipe.tokenizer, "a photo of a"))
    assert method.resolved["delta_positions"] == [1 + prefix, 1 + prefix + n] and method.delta.shape[1] == n > 1


def test_advanchor_delta_span_to_the_end_covers_every_state_after_the_prefix(tiny_pipe: Any, tmp_path: Path) -> None:
    method = _method(advanchor.AdvAnchor, steps=1, inner_steps=1, delta_span="concept_to_end")
    method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    start = 1 + len(advunlearn.concept_token_ids(tiny_pipe.tokenizer, "a photo of a"))
    end = tiny_pipe.tokenizer.model_max_length
    assert method.resolved["delta_positions"] == [start, end] and method.delta.shape[1] == end - start


def test_advanchor_accumulated_gradients_are_running_sums() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    seen = []
    with advanchor.accumulating_gradients({"p": p}, True):
        for k in (1.0, 2.0):
            p.grad = None
            (k * p.sum()).backward()
            seen.append(p.grad.clone())
    torch.testing.assert_close(seen[1], torch.full((2,), 3.0))


# ---------------------------------------------------------------- AdvUnlearn


def test_advunlearn_prefix_ids_count_real_tokens(tiny_pipe: Any) -> None:
    tok = tiny_pipe.tokenizer
    concept = "cat dog"  # 2 words, more tokens with the tiny byte-level tokenizer: no one-token-per-word split
    body = advunlearn.concept_token_ids(tok, concept)
    assert len(body) > len(concept.split())
    ids = advunlearn.prefix_input_ids(tok, concept, 2)[0].tolist()
    assert len(ids) == tok.model_max_length
    assert ids[0] == tok.bos_token_id and ids[3:3 + len(body)] == body and ids[3 + len(body)] == tok.eos_token_id
    plain = tok([concept], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert advunlearn.prefix_input_ids(tok, concept, 0)[0].tolist() == plain[0].tolist()


def test_advunlearn_soft_tokens_enter_the_input_embedding_space(tiny_pipe: Any) -> None:
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    ids = advunlearn.prefix_input_ids(tok, "cat", 1)
    word = te.get_input_embeddings().weight[[tok("dog", add_special_tokens=False).input_ids[0]]].unsqueeze(0)
    real = ids.clone()
    real[0, 1] = tok("dog", add_special_tokens=False).input_ids[0]
    with torch.no_grad():  # a soft token equal to a word's embedding gives that word's states
        torch.testing.assert_close(advunlearn.text_states(te, ids, word), te(real)[0])


def test_advunlearn_losses_match_formula(tiny_pipe: Any, fixed: dict) -> None:
    unet, te, tok = tiny_pipe.unet, tiny_pipe.text_encoder, tiny_pipe.tokenizer
    z, t, e0, ec = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"]
    ids = advunlearn.prefix_input_ids(tok, "cat", 1)
    adv = torch.randn(1, 1, te.config.hidden_size, generator=torch.Generator().manual_seed(3))
    real = ids.clone()
    with torch.no_grad():
        states = advunlearn.text_states(te, ids, adv).expand(2, -1, -1)
        pred = unet(z, t, encoder_hidden_states=states).sample
        e_0 = unet(z, t, encoder_hidden_states=e0).sample
        e_c = unet(z, t, encoder_hidden_states=ec).sample
        retain_states = te(real)[0].expand(2, -1, -1)
        pred_r = unet(z, t, encoder_hidden_states=retain_states).sample
    got = advunlearn.unlearn_loss(unet, te, ids, adv, z, t, e0, ec, 1.0)
    assert got.item() == pytest.approx(((pred - (e_0 - 1.0 * (e_c - e_0))) ** 2).mean().item(), rel=1e-5)
    att = advunlearn.attack_loss(unet, te, ids, adv, z, t, ec)
    assert att.item() == pytest.approx(((pred - e_c) ** 2).mean().item(), rel=1e-5)
    ret = advunlearn.retain_loss(unet, te, real.expand(2, -1), z, t, ec)
    assert ret.item() == pytest.approx(((pred_r - e_c) ** 2).mean().item(), rel=1e-5)


def test_advunlearn_attack_brings_the_concept_back_then_the_outer_step_erases_it(tiny_pipe: Any) -> None:
    unet, te, tok = tiny_pipe.unet, tiny_pipe.text_encoder, tiny_pipe.tokenizer
    unet.requires_grad_(False)
    te.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    plain, ids = advunlearn.prefix_input_ids(tok, "cat", 0), advunlearn.prefix_input_ids(tok, "cat", 1)
    with torch.no_grad():
        emb_c, emb_0 = te(plain)[0], te(advunlearn.prefix_input_ids(tok, "", 0))[0]
    z, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([400])
    params = advunlearn.select_text_encoder_parameters(te)
    trainer = Trainer(params, "adam", 1e-3, 20, desc="test")

    def attack(adv: torch.Tensor) -> float:  # the attack loss: lower = closer to the original concept prediction
        with torch.no_grad():
            return advunlearn.attack_loss(unet, te, ids, adv, z, t, emb_c).item()

    for _ in range(10):  # warm-up: plain ESD on the encoder, the concept prompt no longer gives the concept
        trainer.step(advunlearn.unlearn_loss(unet, te, plain, None, z, t, emb_0, emb_c, 1.0))
    adv0 = te.get_input_embeddings().weight[[5]].detach().unsqueeze(0)
    adv, losses = advunlearn.soft_prompt_attack(unet, te, ids, adv0, emb_c, lambda: (z, t), steps=25, lr=0.05)
    assert attack(adv) < 0.9 * attack(adv0) and losses[-1] < losses[0]  # the attack brings the concept back
    assert all(not p.requires_grad for n, p in te.named_parameters() if n not in params)
    assert all(p.requires_grad for p in params.values())  # the attack left the encoder as it found it
    before = attack(adv)
    outer = [trainer.step(advunlearn.unlearn_loss(unet, te, ids, adv, z, t, emb_0, emb_c, 1.0)) for _ in range(10)]
    trainer.finish()
    assert outer[-1] < outer[0]  # the outer steps lower the ESD loss under the adversarial prompt ...
    assert attack(adv) > before  # ... and take the concept away from it again


def test_advunlearn_changes_only_the_text_encoder_and_it_loads_into_a_fresh_pipeline(
        _tiny_master: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from erasebench.erased import save_erased

    pipe = copy.deepcopy(_tiny_master)
    before = weight_digests(pipe)
    method = _method(advunlearn.AdvUnlearn, **advunlearn.AdvUnlearn.smoke_settings, lr=1e-3)
    torch.manual_seed(0)
    method.erase(pipe, task_of(), _ctx(tmp_path, pipe))
    changed = save_erased(pipe, before, tmp_path, {"method": "advunlearn"})
    assert changed and all(k.startswith("text_encoder.") and "embeddings" not in k for k in changed)
    assert method.resolved["concept_tokens"] == 3 and len(method.attack_losses) == 2
    fresh = copy.deepcopy(_tiny_master)
    state = {k.split(".", 1)[1]: v for k, v in load_file(str(tmp_path / "erased" / "tensors.safetensors")).items()}
    _missing, unexpected = fresh.text_encoder.load_state_dict(state, strict=False)
    assert not unexpected
    ids = pipe.tokenizer(["a photo of a cat", "a dog"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(fresh.text_encoder(ids)[0], pipe.text_encoder(ids)[0])
        assert not torch.allclose(_tiny_master.text_encoder(ids)[0], pipe.text_encoder(ids)[0])


def test_advunlearn_trains_the_paper_layers(tiny_pipe: Any) -> None:
    te = tiny_pipe.text_encoder
    full = advunlearn.select_text_encoder_parameters(te)
    assert not any("embeddings" in n for n in full)
    assert {n for n in full if "final_layer_norm" in n} and {n for n in full if "layers.1." in n}
    first = advunlearn.select_text_encoder_parameters(te, "full", layers=1)
    assert not any("layers.1." in n for n in first) and any("layers.0." in n for n in first)


def test_advunlearn_retain_prompts(tiny_pipe: Any) -> None:
    coco = advunlearn.load_retain_prompts("coco_object", task_of())
    assert len(coco) > 200 and all(p.startswith("a photo of") for p in coco)
    own = advunlearn.load_retain_prompts("task_preserve", task_of())
    assert own == list(dict.fromkeys(item.prompt for item in task_of().splits["preserve"]))


# ---------------------------------------------------------------- All-but-One


def _independent_tail_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    flat = x.flatten(1)
    k = round(p * flat.shape[1])
    srt = flat.sort(dim=1).values
    lo, hi = srt[:, k - 1 : k], srt[:, -k:][:, :1]  # k-th lowest and k-th highest value (no ties in floats)
    return ((flat <= lo) | (flat >= hi)).float().view_as(x)


@pytest.mark.parametrize("mask_source", ["concept_guidance", "difference"])
def test_allbutone_loss_matches_the_reconstructed_formula(mask_source: str, tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    original, params, frozen = trained_and_original(unet, "xattn_kv")
    z, t, e0, ec, ea = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"], fixed["emb_a"]
    p, lam = 0.1, 0.7
    loss = allbutone.allbutone_loss(unet, frozen, z, t, e0, ec, ea, p, lam, mask_source)
    with torch.no_grad():
        o_0, o_c, o_a = (original(z, t, encoder_hidden_states=e).sample for e in (e0, ec, ea))
        g_c, g_a = o_c - o_0, o_a - o_0
        m = _independent_tail_mask(g_c if mask_source == "concept_guidance" else g_a - g_c, p)
        assert m.mean().item() == pytest.approx(2 * p, abs=2 / m[0].numel())
        target = torch.where(m.bool(), o_a, o_c)  # alternative inside the mask, the concept outside
        pred_c = unet(z, t, encoder_hidden_states=ec).sample
        pred_0 = unet(z, t, encoder_hidden_states=e0).sample
    expected = ((pred_c - target) ** 2).mean() + lam * ((pred_0 - o_0) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_allbutone_without_mask_is_the_frozen_anchor_target(tiny_pipe: Any, fixed: dict) -> None:
    unet = tiny_pipe.unet
    frozen = Shadow(select_parameters(unet, "xattn_kv"))
    z, t, e0, ec, ea = fixed["z"], fixed["t"], fixed["emb_0"], fixed["emb_c"], fixed["emb_a"]
    loss = allbutone.allbutone_loss(unet, frozen, z, t, e0, ec, ea, 0.5, 0.0)
    with torch.no_grad():
        expected = ((unet(z, t, encoder_hidden_states=ec).sample - unet(z, t, encoder_hidden_states=ea).sample)
                    ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_allbutone_records_that_it_is_a_reimplementation() -> None:
    method = _method(allbutone.AllButOne)
    assert method.settings()["reimplementation"] == "from the paper, no official code"
