"""TRCE: the closed-form [EoT] stage, the contrastive stage-2 loss, and the early-step schedule."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import paper_method, task_of

from erasebench.api import RunContext
from erasebench.closed_form import kv_layers, token_states
from erasebench.erasure import ddim_scheduler
from erasebench.methods.trce import TRCE, contrastive_loss

SMALL = {"num_trajectories": 3, "epochs": 2, "ddim_steps": 10, "max_early_step": 3, "reg_trajectories": 4,
         "reg_batch_size": 2, "preserve_source": "concepts", "lr": 1e-3}


def _method(**kw: Any) -> TRCE:
    return paper_method("trce", smoke=False, **{**SMALL, **kw})


def _run() -> RunContext:
    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=Path(tempfile.mkdtemp()),
                      generate=lambda pipe, items: [], original_images=lambda items: [])


def test_stage1_is_closed_form_and_maps_malicious_eot_to_the_safe_one(tiny_pipe: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    orig_step = torch.optim.Optimizer.step
    monkeypatch.setattr(torch.optim.Optimizer, "step",
                        lambda self, *a, **k: calls.append(1) or orig_step(self, *a, **k))
    method, task = _method(stage2=False, preserve_scale=1e-3), task_of()  # weak preservation: the map is ~exact
    pairs = method.prompt_pairs(task)
    assert pairs[0] == ("cat", "an object") and all("cat" in m and "cat" not in s for m, s in pairs)
    layers = kv_layers(tiny_pipe.unet)
    old = {n: p.detach().clone() for n, p in layers.items()}
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    c_m = token_states(tiny_pipe, [m for m, _ in pairs], which="eot")
    c_s = token_states(tiny_pipe, [s for _, s in pairs], which="eot")
    method.erase(tiny_pipe, task, _run())
    assert not calls
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(layers)
    for n, p in layers.items():
        want = c_s @ old[n].T                      # the safe prompts' [EoT] through the original k/v
        got, was = c_m @ p.detach().T, c_m @ old[n].T
        err, gap = (got - want).norm() / want.norm(), (was - want).norm() / want.norm()
        assert err < 0.05 * gap, (n, float(err), float(gap))


def test_stage1_preservation_keeps_other_concepts(tiny_pipe: Any) -> None:
    method, task = _method(stage2=False, preserve_scale=1.0), task_of()
    keep = token_states(tiny_pipe, method.preserve_texts(task), which="eot")
    assert method.preserve_texts(task) and not any("cat" in t for t in method.preserve_texts(task))
    layers = kv_layers(tiny_pipe.unet)
    old = {n: p.detach().clone() for n, p in layers.items()}
    method.erase(tiny_pipe, task, _run())
    weak = _method(stage2=False, preserve_scale=1e-3)
    drift = {n: float((keep @ (p.detach() - old[n]).T).norm()) for n, p in layers.items()}
    for p, w in zip(layers.values(), old.values()):
        p.data = w.clone()
    weak.erase(tiny_pipe, task, _run())
    drift_weak = {n: float((keep @ (p.detach() - old[n]).T).norm()) for n, p in layers.items()}
    assert all(drift[n] < drift_weak[n] for n in layers)


def test_contrastive_loss_matches_hand_computation(tiny_pipe: Any, fixed: dict) -> None:
    unet, z, t = tiny_pipe.unet, fixed["z"], fixed["t"]
    with torch.no_grad():
        ref_m = unet(z, t, encoder_hidden_states=fixed["emb_c"]).sample
        ref_s = unet(z, t, encoder_hidden_states=fixed["emb_a"]).sample
        ref_u = unet(z, t, encoder_hidden_states=fixed["emb_0"]).sample
    g = torch.Generator().manual_seed(5)
    eps_m, eps_u = ref_m + 0.1 * torch.randn(z.shape, generator=g), ref_u + 0.1 * torch.randn(z.shape, generator=g)
    for guidance, beta, margin in ((15.0, 1.0, 0.01), (2.0, 0.5, 10.0), (3.0, 2.0, -1e6)):
        got = contrastive_loss(eps_m, eps_u, ref_m, ref_s, ref_u, guidance, beta, margin)
        terms = []
        for b in range(z.shape[0]):
            prefer = ref_s[b] + guidance * (ref_s[b] - ref_u[b])
            reject = ref_m[b] + guidance * (ref_m[b] - ref_u[b])
            h = [max(0.0, beta * (float(((e[b] - prefer) ** 2).mean()) - float(((e[b] - reject) ** 2).mean())
                                  + margin)) for e in (eps_m, eps_u)]
            terms.append((h[0] + h[1]) / 2)
        want = sum(terms) / len(terms)
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert float(contrastive_loss(eps_m, eps_u, ref_m, ref_s, ref_u, 3.0, 2.0, -1e6)) == 0.0
    # The malicious prediction pulled to the rejected target costs more than one at the preferred target.
    prefer, reject = ref_s + 15 * (ref_s - ref_u), ref_m + 15 * (ref_m - ref_u)
    assert contrastive_loss(reject, reject, ref_m, ref_s, ref_u, 15, 1, 0.01) > 0
    assert contrastive_loss(prefer, prefer, ref_m, ref_s, ref_u, 15, 1, 0.01) == 0


def test_stage2_samples_only_the_early_steps_and_trains_attn1_and_queries(tiny_pipe: Any) -> None:
    method = _method()
    steps, regs = method.schedule(torch.Generator().manual_seed(0))
    assert len(steps) == 6 and {s for _, s in steps} <= set(range(4))
    many = _method(num_trajectories=200, epochs=1).schedule(torch.Generator().manual_seed(0))[0]
    assert {s for _, s in many} == set(range(4))
    assert all(0 <= tb < 1000 and sb < 10 for draws in regs for _, sb, tb in draws)
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    method.erase(tiny_pipe, task_of(), _run())
    early = [int(t) for t in ddim_scheduler(tiny_pipe, 10).timesteps[:4]]
    assert method.target_timesteps and set(method.target_timesteps) <= set(early)
    assert min(early) > 500
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    trained = {n for n in changed if ".attn1." in n or ".attn2.to_q." in n}
    assert trained and changed == trained | set(kv_layers(tiny_pipe.unet))
    assert len(method.losses) == 6


def test_stage2_uses_the_original_model_as_reference(tiny_pipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    import erasebench.methods.trce as trce
    from erasebench.erasure import encode

    original = copy.deepcopy(tiny_pipe.unet)
    seen: list[tuple] = []
    monkeypatch.setattr(trce, "contrastive_loss", lambda *a: seen.append(a) or trce.F.mse_loss(a[0], a[2]) * 0)
    method = _method(epochs=1, num_trajectories=1, reg_batch_size=0)
    method.erase(tiny_pipe, task_of(), _run())
    # recompute the references with a real copy of the original UNet on the step's latent
    (p_m, p_u, r_m, r_s, r_u, *_), = seen
    pair = method.stage2_pairs(task_of())[0]
    with torch.no_grad():
        x = method.last_latent
        t = torch.tensor([method.target_timesteps[0]])
        want_m = original(x, t, encoder_hidden_states=encode(tiny_pipe, [pair[0]])).sample
        want_s = original(x, t, encoder_hidden_states=encode(tiny_pipe, [pair[1]])).sample
    torch.testing.assert_close(r_m, want_m, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r_s, want_s, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(p_m, r_m, atol=1e-4)  # the trained model has the stage-1 k/v edit
