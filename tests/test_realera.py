"""RealEra (reimplementation from the paper): neighbour mining, the closed-form stage, the LoRA adapter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from erasebench.api import RunContext
from erasebench.errors import ErasebenchError
from erasebench.methods.realera import RealEra, mine_perturbations

from conftest import task_of  # isort: skip


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                      generate=lambda pipe, items: [], original_images=lambda items: [])


def _task() -> Any:
    return task_of()


def _method(**kw: Any) -> RealEra:
    settings = {**RealEra.smoke_settings, **kw}
    return RealEra(RealEra.Config(**settings))


def test_mined_neighbours_satisfy_the_band() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(3, 16, generator=g) + 2.0
    nb = mine_perturbations(e, 50, 0.8, 0.7, 0.95, g)
    assert nb.shape == (50, 3, 16)
    flat, cand = e.flatten(), nb.flatten(1)
    cos = F.cosine_similarity(cand, flat.unsqueeze(0), dim=1)
    dist = (cand - flat).norm(dim=1)
    assert bool((cos >= 0.7 - 1e-6).all() and (cos <= 0.95 + 1e-6).all())
    assert bool((dist <= 0.8 * flat.norm() + 1e-5).all())
    assert float(cos.std()) > 0.01 and len({round(float(c), 6) for c in cos}) == 50  # random, not one point
    far = mine_perturbations(e, 50, 0.8, 0.7, 0.95, g, beyond=True, beyond_dist=2.0)
    cos_f = F.cosine_similarity(far.flatten(1), flat.unsqueeze(0), dim=1)
    dist_f = (far.flatten(1) - flat).norm(dim=1)
    outside = (cos_f < 0.7) | (dist_f > 0.8 * flat.norm())
    assert bool(outside.all() and (cos_f < 0.95).all())


def test_unreachable_band_is_an_error() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ErasebenchError, match="neighbours"):
        # radius 0.01 ||e|| keeps cos above 0.9999: the band [0.5, 0.6] cannot be met
        mine_perturbations(torch.ones(8), 4, 0.01, 0.5, 0.6, g, max_tries=3)


def test_closed_form_only_takes_no_optimizer_step(tiny_pipe: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.optim.Optimizer, "step", lambda self, *a, **k: calls.append(1))
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append(1))  # Adam overrides step
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    try:
        RealEra(RealEra.Config(lora_steps=0, cf_neighbors=4, cf_beyond=4)).erase(tiny_pipe, _task(), _ctx(tmp_path))
    finally:
        handle.remove()
    assert calls == []
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    assert not (tmp_path / "lora").exists()


def test_lora_steps_use_the_optimizer(tiny_pipe: Any, tmp_path: Path) -> None:
    calls: list[int] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    try:
        _method(lora_steps=3).erase(tiny_pipe, _task(), _ctx(tmp_path))
    finally:
        handle.remove()
    assert len(calls) == 3


def test_returned_unet_keeps_its_parameter_names(tiny_pipe: Any, tmp_path: Path) -> None:
    names = [n for n, _ in tiny_pipe.unet.named_parameters()]
    out = _method(lora_steps=2).erase(tiny_pipe, _task(), _ctx(tmp_path))
    assert [n for n, _ in out.unet.named_parameters()] == names
    assert list(out.unet.state_dict()) == list(copy.deepcopy(tiny_pipe.unet).state_dict())
    assert not any("lora" in n or "base_layer" in n for n in out.unet.state_dict())
    assert not getattr(out.unet, "_hf_peft_config_loaded", False)
    assert not any(p.requires_grad for p in out.unet.parameters())


@pytest.mark.parametrize("closed_form", [False, True])
def test_saved_lora_reloads_to_the_fused_result(_tiny_master: Any, tmp_path: Path, closed_form: bool) -> None:
    pipe, fresh = copy.deepcopy(_tiny_master), copy.deepcopy(_tiny_master)
    method = _method(lora_steps=3, lr=5e-2, closed_form=closed_form)
    out = method.erase(pipe, _task(), _ctx(tmp_path))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    # the adapter goes on top of the closed-form weights (the harness saves those tensors with the rest)
    params = dict(fresh.unet.named_parameters())
    with torch.no_grad():
        for n, w in method.closed_form_weights.items():
            params[n].copy_(w)
    fresh.load_lora_weights(tmp_path / "lora")
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 16, 16, generator=g)
    emb = torch.randn(2, 77, fresh.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([700, 50])
    with torch.no_grad():
        fused = out.unet(z, t, encoder_hidden_states=emb).sample
        loaded = fresh.unet(z, t, encoder_hidden_states=emb).sample
        fresh.disable_lora()
        base = fresh.unet(z, t, encoder_hidden_states=emb).sample
    assert torch.allclose(fused, loaded, atol=1e-5, rtol=1e-4)
    assert (fused - base).abs().max() > 1e-4  # the adapter did something (so the match is not vacuous)


def test_beyond_concepts_include_the_tasks_other_concepts() -> None:
    task = task_of("toy_object", "circle")
    concept, anchor, keep = RealEra().prompts(task)
    assert (concept, anchor) == ("a circle", "a shape")
    assert set(keep) == {"a square", "a triangle", "a star", "a cross", ""}
