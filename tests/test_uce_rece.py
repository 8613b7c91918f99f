"""UCE and RECE: closed form only (no optimiser), only attn2 k/v change, and the edits do what their formulas say."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import paper_method, task_of

from erasebench.api import RunContext
from erasebench.closed_form import kv_layers, token_states
from erasebench.methods.rece import RECE, rece_epoch, regzero_embedding
from erasebench.methods.uce import UCE, concept_phrase, encode_all, prompts_for, tail_pairs, uce_edit


def _task(**changes: Any) -> Any:
    task = task_of()
    return dataclasses.replace(task, **changes) if changes else task


def _ctx(tmp_path: Path) -> RunContext:
    def no_images(*_: Any) -> list:
        raise AssertionError("a closed-form method must not generate images")

    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                      generate=no_images, original_images=no_images, limit=2)


def _all_tensors(pipe: Any) -> dict[str, torch.Tensor]:
    return {f"{part}.{n}": p.detach().clone() for part in ("unet", "text_encoder", "vae")
            for n, p in getattr(pipe, part).state_dict().items()}


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return float((a - b).norm() / scale.norm())


@pytest.mark.parametrize("name", ["uce", "rece"])
def test_no_optimiser_no_backward_and_only_cross_attention_kv_change(name: str, tiny_pipe: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"optimizer": 0, "step": 0, "backward": 0}
    init, step, backward = torch.optim.Optimizer.__init__, torch.optim.Adam.step, torch.autograd.backward

    def count(key: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", count("optimizer", init))
    monkeypatch.setattr(torch.optim.Adam, "step", count("step", step))
    monkeypatch.setattr(torch.autograd, "backward", count("backward", backward))
    # The counters see what a training method would do (so the zero below means something).
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([w], lr=0.1)
    (w ** 2).sum().backward()
    opt.step()
    assert calls == {"optimizer": 1, "step": 1, "backward": 1}

    before = _all_tensors(tiny_pipe)
    paper_method(name, preserve="task").erase(tiny_pipe, _task(), _ctx(tmp_path))
    assert calls == {"optimizer": 1, "step": 1, "backward": 1}, "erase() built an optimiser or back-propagated"
    after = _all_tensors(tiny_pipe)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = {f"unet.{n}" for n in kv_layers(tiny_pipe.unet)}
    assert expected and all(".attn2.to_k.weight" in n or ".attn2.to_v.weight" in n for n in expected)
    assert changed == expected


def test_uce_maps_the_concept_onto_the_guide_and_keeps_the_preserved(_tiny_master: Any, tmp_path: Path) -> None:
    import copy

    task = _task()   # smoke task: erase "cat"; "dog" and "car" are the other concepts
    c, g, keep = (token_states(_tiny_master, p) for p in (["cat"], [""], ["dog", "car"]))
    original = {n: p.detach().clone() for n, p in kv_layers(_tiny_master.unet).items()}
    edited = {}
    for preserve in ("none", "task"):
        pipe = copy.deepcopy(_tiny_master)
        method = paper_method("uce", preserve=preserve)
        assert method.config.lamb == 0.5 and method.config.tokens == "last" and method.config.guide == "auto"
        method.erase(pipe, task, _ctx(tmp_path))
        assert method.prompts == {"erase": ["cat"], "guide": [""], "preserve": [] if preserve == "none" else
                                  ["dog", "car"]}
        edited[preserve] = {n: p.detach() for n, p in kv_layers(pipe.unet).items()}
    for n, w_old in original.items():
        target, was = g @ w_old.T, c @ w_old.T   # UCE's v* = W_old c_guide ("": the start token's state)
        # Erase alone: |W_new c - v*| = lambda / (lambda + |c|^2) |W_old c - v*| (lambda 0.5, |c|^2 = 32).
        assert _rel(c @ edited["none"][n].T, target, target - was) < 0.03, n
        # With the preserved concepts (cosine 0.83 / 0.96 to "cat" in this random encoder) the two pull apart,
        # yet "cat" still moves most of the way and "dog" / "car" barely move, far less than without them.
        assert _rel(c @ edited["task"][n].T, target, target - was) < 0.25, n
        drift = {k: _rel(keep @ w[n].T, keep @ w_old.T, keep @ w_old.T) for k, w in edited.items()}
        assert drift["task"] < 0.15 and drift["task"] < 0.5 * drift["none"], (n, drift)


def test_uce_tail_tokens_pair_the_last_word_and_what_follows(tiny_pipe: Any) -> None:
    inputs, targets = tail_pairs(tiny_pipe, ["a cat"], [""])
    states, lengths = encode_all(tiny_pipe, ["a cat", " "])
    fe, fg = int(lengths[0]) - 2, int(lengths[1]) - 2   # "a cat": last letter; " ": the start token
    n = states.shape[1] - (fe - fg)
    assert inputs.shape == targets.shape == (n, states.shape[-1])
    torch.testing.assert_close(inputs, states[0, fe:])
    torch.testing.assert_close(targets, states[1, fg:fg + n])
    layers = uce_edit(tiny_pipe, ["a cat"], [""], [], lamb=0.5, preserve_scale=None, tokens="tail")
    assert set(layers) == set(kv_layers(tiny_pipe.unet))


def test_defaults_by_task_kind() -> None:
    style = _task(kind="style", concepts={"cat": "cat", "dog": "dog"}, erase_prompt="a cat shape")
    assert concept_phrase(style, "dog") == "a dog shape"
    assert prompts_for(style, "", "auto", "auto", False) == (["a cat shape"], ["art"], ["a dog shape"])
    assert prompts_for(_task(), "", "auto", "auto", False) == (["cat"], [""], [])   # objects: "" and no preserve
    edits, guides, _ = prompts_for(_task(), "", "auto", "none", True)
    assert len(edits) == len(guides) == 6 and "image of cat" in edits and "image of " in guides
    rece = RECE(RECE.Config())
    assert rece.kind_defaults("nudity") == (0.1, 3)
    assert rece.kind_defaults("style") == rece.kind_defaults("object") == (1e-3, 1)
    assert RECE(RECE.Config(epochs=2, regular_scale=0.5)).kind_defaults("nudity") == (0.5, 2)
    assert UCE.Config().guide == "auto" and RECE.Config().uce_tokens == "tail"


def test_rece_embedding_solves_its_closed_form_and_the_epoch_erases_it(tiny_pipe: Any) -> None:
    layers = kv_layers(tiny_pipe.unet)
    original = {n: p.detach().clone() for n, p in layers.items()}
    uce_edit(tiny_pipe, ["a cat"], [""], [], lamb=0.5, preserve_scale=None, tokens="tail")   # RECE's start
    current = {n: p.detach().clone() for n, p in layers.items()}
    e = encode_all(tiny_pipe, ["a cat"])[0][0].double()                                      # [77, D]
    reg = 1e-3
    adv = regzero_embedding(e, current, original, reg).double()
    # Stationary point of sum_l |W_l e' - W_l^o e|^2 + reg |e'|^2: sum_l W_l^T (W_l e' - W_l^o e) + reg e' = 0.
    grad = reg * adv + sum((adv @ current[n].double().T - e @ original[n].double().T) @ current[n].double()
                           for n in layers)
    assert float(grad.norm()) < 1e-6 * float(adv.norm())

    def miss(x: torch.Tensor) -> float:   # how far x's projections through the edited layers are from e's original
        return sum(float((x @ current[n].double().T - e @ original[n].double().T).norm() ** 2) for n in layers)
    assert miss(adv) < 0.5 * miss(e)   # the derived embedding regenerates the concept that UCE removed

    guide = encode_all(tiny_pipe, [" "])[0][0].double()
    before = {n: float((adv @ current[n].double().T - guide @ current[n].double().T).norm()) for n in layers}
    got = rece_epoch(tiny_pipe, layers, original, ["a cat"], [""], [""], reg, lamb=0.1, erase_scale=1.0,
                     preserve_scale=0.1)
    torch.testing.assert_close(got[0].double(), adv, rtol=1e-5, atol=1e-5)
    for n, p in layers.items():
        after = float((adv @ p.detach().double().T - guide @ current[n].double().T).norm())
        assert after < 0.2 * before[n], n   # the epoch maps the derived embedding onto the guide's projections


def test_rece_erase_runs_uce_then_its_epochs(tiny_pipe: Any, tmp_path: Path) -> None:
    method = paper_method("rece", epochs=2)
    method.erase(tiny_pipe, _task(), _ctx(tmp_path))
    assert len(method.embeddings) == 2 and method.prompts["guide"] == [""] and method.prompts["preserve"] == []
    assert float((method.embeddings[0] - method.embeddings[1]).norm()) > 0.1 * float(method.embeddings[0].norm())
    guide = encode_all(tiny_pipe, [" "])[0][0]
    for n, p in kv_layers(tiny_pipe.unet).items():   # the last epoch's embedding now projects like the guide
        adv = method.embeddings[-1][0]
        assert _rel(adv @ p.detach().T, guide @ p.detach().T, adv @ p.detach().T) < 0.15, n   # measured ~0.06
