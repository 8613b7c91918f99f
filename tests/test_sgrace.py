"""S-GRACE (methods/sgrace.py): the attack, the edit's regularisers, what it trains, and the shipped lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_cfg, paper_method, task_of

from erasebench.api import RunContext
from erasebench.methods.advunlearn import select_text_encoder_parameters
from erasebench.methods.sgrace import (adv_features, adv_states, anchor_loss, attack_loss, concept_lists,
                                       copycat_prompt, cos_mean, edit_loss, feature, load_concept_file, param_l1,
                                       pgd_attack)
from erasebench.erasure import concept_token_ids, text_states

REAL_TASKS = ("style", "object", "nudity")
TOY_TASKS = ("toy_object", "toy_style")


def _ids(tok: Any, text: str) -> torch.Tensor:
    return tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def _attack_setup(pipe: Any) -> dict[str, Any]:
    tok, te = pipe.tokenizer, pipe.text_encoder
    vocab = te.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(0)
    prompts = [copycat_prompt(tok, vocab, ["cat"], 1, 0, gen),
               copycat_prompt(tok, vocab, ["cat", "kitten", "whiskers", "paw"], 3, 2, gen)]
    g = torch.Generator().manual_seed(1)
    samples = {"noise": torch.randn(2, 4, 16, 16, generator=g), "x_t": torch.randn(2, 4, 16, 16, generator=g),
               "t": torch.tensor([800, 900])}
    with torch.no_grad():
        f_target = feature(text_states(te, _ids(tok, "cat")), 1 + len(concept_token_ids(tok, "cat")), lambda h: h)
    return {"prompts": prompts, "samples": samples, "f_target": f_target}


def _objective(pipe: Any, s: dict[str, Any], advs: list[torch.Tensor], sim_weight: float) -> tuple[float, float]:
    with torch.no_grad():
        states = adv_states(pipe.text_encoder, s["prompts"], advs)
        feats = adv_features(states, s["prompts"], "last", lambda h: h)
        loss = attack_loss(pipe.unet, states, feats, s["samples"], s["f_target"], sim_weight)
    return float(loss), float(cos_mean(feats, s["f_target"]))


def test_copycat_first_prompt_is_the_concept(tiny_pipe: Any) -> None:
    s = _attack_setup(tiny_pipe)
    p = s["prompts"][0]
    tok = tiny_pipe.tokenizer
    span = concept_token_ids(tok, "cat")
    assert p.length == len(span) and p.ids.shape == (1, tok.model_max_length)
    assert p.ids[0, 1:1 + p.length].tolist() == span and p.ids[0, 0] == tok.bos_token_id
    assert (p.ids[0, 1 + p.length:] == tok.eos_token_id).all()
    assert torch.equal(p.init[0], tiny_pipe.text_encoder.get_input_embeddings().weight[span])
    # its span embeddings reproduce the plain prompt's states up to the end token
    with torch.no_grad():
        h = adv_states(tiny_pipe.text_encoder, [p], [p.init])
        plain = text_states(tiny_pipe.text_encoder, _ids(tok, "cat"))
    assert torch.allclose(h[:, : p.length + 2], plain[:, : p.length + 2], atol=1e-5)


def test_batched_adversarial_states_equal_one_by_one(tiny_pipe: Any) -> None:
    s = _attack_setup(tiny_pipe)
    g = torch.Generator().manual_seed(2)
    advs = [p.init + 0.01 * torch.randn(p.init.shape, generator=g) for p in s["prompts"]]
    with torch.no_grad():
        batched = adv_states(tiny_pipe.text_encoder, s["prompts"], advs)
        for i, (p, a) in enumerate(zip(s["prompts"], advs)):
            one = text_states(tiny_pipe.text_encoder, p.ids, a, start=1)
            assert torch.allclose(batched[i:i + 1], one, atol=1e-5)
    feats = adv_features(batched, s["prompts"], "last", lambda h: h)
    assert torch.equal(feats[1], batched[1, s["prompts"][1].length])
    eot = adv_features(batched, s["prompts"], "eot", lambda h: h)
    assert torch.equal(eot[0], batched[0, s["prompts"][0].length + 1])


@pytest.mark.parametrize("sim_weight", [0.1, 5.0])
def test_attack_goes_the_attackers_way(tiny_pipe: Any, sim_weight: float) -> None:
    """The attack lowers its objective against the current encoder (the concept's noise reconstruction and, with a
    large weight, raises the CLIP-target similarity) and leaves the encoder as it was."""
    s = _attack_setup(tiny_pipe)
    te = tiny_pipe.text_encoder
    before = {n: p.detach().clone() for n, p in te.named_parameters()}
    flags = {n: p.requires_grad for n, p in te.named_parameters()}
    inits = [p.init for p in s["prompts"]]
    advs, losses = pgd_attack(tiny_pipe.unet, te, s["prompts"], s["samples"], s["f_target"], lambda h: h,
                              steps=6, lr=5e-3, sim_weight=sim_weight)
    loss0, sim0 = _objective(tiny_pipe, s, inits, sim_weight)
    loss1, sim1 = _objective(tiny_pipe, s, advs, sim_weight)
    assert losses[0] == pytest.approx(loss0, rel=1e-5)
    assert loss1 < loss0
    if sim_weight > 1:
        assert sim1 > sim0
    assert all(torch.equal(p, before[n]) for n, p in te.named_parameters())
    assert all(p.requires_grad == flags[n] and p.grad is None for n, p in te.named_parameters())
    # sign steps: no coordinate moves more than steps * lr-ish (Adam on signs moves ~lr per step)
    assert all((a - a0).abs().max() <= 6 * 5e-3 * 1.01 for a, a0 in zip(advs, inits))


def test_attack_projection_keeps_the_ball(tiny_pipe: Any) -> None:
    s = _attack_setup(tiny_pipe)
    advs, _ = pgd_attack(tiny_pipe.unet, tiny_pipe.text_encoder, s["prompts"], s["samples"], s["f_target"],
                         lambda h: h, steps=6, lr=5e-3, sim_weight=0.1, project=True)
    for a, p in zip(advs, s["prompts"]):
        assert (a - p.init).abs().max() <= 4 * 5e-3 + 1e-7
        assert a.min() >= p.init.min() - 1e-7 and a.max() <= p.init.max() + 1e-7


def test_param_l1_equals_hand_computation(tiny_pipe: Any) -> None:
    params = select_text_encoder_parameters(tiny_pipe.text_encoder)
    originals = {n: p.detach().clone() for n, p in params.items()}
    assert float(param_l1(params, originals).detach()) == 0.0
    names = list(params)
    with torch.no_grad():
        params[names[0]].add_(0.1)            # mean |delta| = 0.1 on this tensor
        params[names[1]].sub_(0.2)            # 0.2 on this one
        flat = params[names[2]].view(-1)
        flat[0] += 3.0                        # 3 / numel on this one
    expected = 0.1 + 0.2 + 3.0 / params[names[2]].numel()
    assert float(param_l1(params, originals).detach()) == pytest.approx(expected, rel=1e-4)


def test_anchor_loss_equals_hand_computation(tiny_pipe: Any) -> None:
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    prompts = ["a photo of a dog", "a picture of a car"]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        original = te(ids)[0]
        assert float(anchor_loss(te, ids, original)) == pytest.approx(0.0, abs=1e-10)
        g = torch.Generator().manual_seed(3)
        for p in select_text_encoder_parameters(te).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        now = te(ids)[0]
        assert now.shape[1] == tok.model_max_length          # the full 77-token states are compared
        hand = sum(float((now[i, j, k] - original[i, j, k]) ** 2)
                   for i in range(now.shape[0]) for j in range(now.shape[1]) for k in range(now.shape[2]))
        assert float(anchor_loss(te, ids, original)) == pytest.approx(hand / now.numel(), rel=1e-4)


def test_edit_loss_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    f, f_c, f0 = torch.randn(3, 5, generator=g), torch.randn(1, 5, generator=g), torch.randn(3, 5, generator=g)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    hand = sum(cos(f[i], f_c[0]) for i in range(3)) / 3 + 1 + 1.2 * (1 - sum(cos(f[i], f0[i]) for i in range(3)) / 3)
    assert float(edit_loss(f, f_c, f0, 1.2)) == pytest.approx(hand, rel=1e-5)
    assert float(edit_loss(f, f_c, f, 1.2)) == pytest.approx(hand - 1.2 * (1 - sum(cos(f[i], f0[i])
                                                                                    for i in range(3)) / 3), rel=1e-5)


def test_only_text_encoder_layers_change(tiny_pipe: Any, tmp_path: Path) -> None:
    unet = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    vae = {k: v.clone() for k, v in tiny_pipe.vae.state_dict().items()}
    te = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    method = paper_method("sgrace")
    task = task_of()
    run = RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                     generate=lambda *a: [], original_images=lambda *a: [])
    out = method.erase(tiny_pipe, task, run)
    assert all(torch.equal(v, unet[k]) for k, v in out.unet.state_dict().items())
    assert all(torch.equal(v, vae[k]) for k, v in out.vae.state_dict().items())
    changed = {k for k, v in out.text_encoder.state_dict().items() if not torch.equal(v, te[k])}
    assert changed and all(("encoder.layers." in k or "final_layer_norm" in k) and "embeddings" not in k
                           for k in changed)
    assert len(method.losses) == 2 * 2 and len(method.attack_losses) == 2
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in out.text_encoder.parameters())


def _task_concepts(name: str) -> dict[str, str]:
    return dict(compose_cfg([f"task={name}"])["task"]["concepts"])


def test_shipped_concept_lists_load_with_their_counts() -> None:
    table = load_concept_file()
    real = {k for t in REAL_TASKS for k in _task_concepts(t)} | {"cassette_player"}
    toy = {k for t in TOY_TASKS for k in _task_concepts(t)}
    assert len(real) == 20 and len(toy) == 10 and set(table) == real | toy
    for key, entry in table.items():
        n_rel, n_unrel = (25, 20) if key in real else (12, 16)
        assert len(entry["related"]) == n_rel and len(set(entry["related"])) == n_rel, key
        assert len(entry["unrelated"]) == n_unrel and len(set(entry["unrelated"])) == n_unrel, key
        assert not {s.lower() for s in entry["related"]} & {s.lower() for s in entry["unrelated"]}, key
    from erasebench.toy.data import vocabulary

    words = set(vocabulary())
    assert all(w in words for k in toy for s in table[k]["related"] + table[k]["unrelated"] for w in s.split())


def test_concept_lists_for_tasks() -> None:
    task = task_of("toy_object", "circle")
    related, unrelated = concept_lists("file", task, task.erase_text())
    assert related[0] == "a circle" and len(related) == 12 and len(unrelated) == 16   # "a circle" is in the file
    style = task_of("style", "van_gogh")
    related, unrelated = concept_lists("file", style, style.erase_text())
    assert related[0] == "Van Gogh" and len(related) == 26 and len(unrelated) == 20
    related, unrelated = concept_lists("task", task, task.erase_text())
    assert related[0] == "a circle" and all("circle" in r for r in related)
    assert unrelated and not any("circle" in u for u in unrelated)


def test_projection_is_read_from_the_clip_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from erasebench import weights
    from erasebench.errors import ErasebenchError
    from erasebench.methods.sgrace import load_projection

    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    save_file({"text_projection.weight": w, "visual_projection.weight": torch.zeros(6, 5)},
              str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(weights, "require_hf", lambda key, needed_by="": tmp_path)
    h = torch.randn(3, 4)
    assert torch.allclose(load_projection("openai/clip-vit-large-patch14", 4, torch.device("cpu"))(h), h @ w.T)
    with pytest.raises(ErasebenchError, match="projection=none"):
        load_projection("openai/clip-vit-large-patch14", 8, torch.device("cpu"))
    assert load_projection("none", 4, torch.device("cpu"))(h) is h
