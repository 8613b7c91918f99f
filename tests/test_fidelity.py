"""Fidelity to each method's official code: the reference rule written out step by step, from the official
source (file and commit named per test), against erasebench's implementation on the same inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import paper_method, task_of
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
            if name.startswith("conv_out.") or ("time_embed" in name):  # noqa: SIM114 (as the reference writes it)
                continue
            elif "attn2" in name:
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


# --- UCE (rohitgandikota/unified-concept-editing, train-scripts/train_erase.py, 2023 version bd5fb51) ---

def test_uce_2023_preserve_scale_is_unrounded(tiny_pipe: Any) -> None:
    from erasebench.methods.uce import uce_groups

    preserve = ["a dog", "a bird"]
    retain_texts = ["", *preserve]                       # retain_texts = [''] + preserve_concepts
    reference = max(0.1, 1 / len(retain_texts))         # if preserve_scale is None: max(0.1, 1/len(retain_texts))
    groups = uce_groups(tiny_pipe, ["a cat"], [""], preserve, "tail", 1.0, None)
    assert groups[1].scale == reference == 1 / 3


# --- RECE (CharlesGong12/RECE @ 403a67f: train.py for nudity/unsafe, train_artists.py, train_object.py) ---

def _rece_retain_texts(script: str, old_texts: list[str], preserve_concepts: list[str]) -> list[str]:
    """How each RECE script builds ``retain_texts`` (train.py ~154, train_artists.py ~176, train_object.py ~237)."""
    if script == "train.py":
        return [" " for _ in old_texts] if not preserve_concepts else list(preserve_concepts)
    return ["", *preserve_concepts]


@pytest.mark.parametrize(("kind", "script"), [("nudity", "train.py"), ("unsafe", "train.py"),
                                              ("style", "train_artists.py"), ("object", "train_object.py")])
def test_rece_epochs_preserve_what_the_reference_script_preserves(tiny_pipe: Any, tmp_path: Any, kind: str,
                                                                  script: str) -> None:
    import copy
    import dataclasses

    from erasebench.methods.rece import RECE, rece_epoch
    from erasebench.methods.uce import prompts_for, uce_edit

    from erasebench.api import RunContext
    from erasebench.closed_form import kv_layers

    task = dataclasses.replace(task_of(), kind=kind)
    method = RECE(RECE.Config(prompt="a cat; a dog", epochs=1, regular_scale=0.1, preserve="none"))
    ctx = RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                     generate=None, original_images=None, limit=2)  # type: ignore[arg-type]
    reference_pipe = copy.deepcopy(tiny_pipe)
    method.erase(tiny_pipe, task, ctx)

    c = method.config   # the same UCE stage, then one epoch with the reference script's retain texts
    layers = kv_layers(reference_pipe.unet)
    original = {n: p.detach().clone() for n, p in layers.items()}
    edits, guides, preserve = prompts_for(task, c.prompt, c.guide, c.preserve, False, expand_guides=False)
    uce_edit(reference_pipe, edits, guides, preserve, c.uce_lamb, c.uce_erase_scale, c.uce_preserve_scale,
             c.uce_tokens)
    rece_epoch(reference_pipe, layers, original, edits, guides, _rece_retain_texts(script, edits, preserve),
               0.1, c.lamb, c.erase_scale, c.preserve_scale)
    for name, p in kv_layers(tiny_pipe.unet).items():
        torch.testing.assert_close(p.detach(), layers[name].detach(), rtol=1e-6, atol=1e-7)


# --- AbConcept / DoCo: CustomDiffusion's attention processor (concept-ablation diffusers/model_pipeline.py
# @ c11fb1b ~75-110, set on the UNet in train.py ~95; DoCo trains with the same one) ---

class _CustomDiffusionAttnProcessor:
    """The reference processor, line by line (diffusers >= 0.20 branch)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        query = attn.to_q(hidden_states)
        crossattn = False
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        else:
            crossattn = True
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if crossattn:
            detach = torch.ones_like(key)
            detach[:, :1, :] = detach[:, :1, :] * 0.0
            key = detach * key + (1 - detach) * key.detach()
            value = detach * value + (1 - detach) * value.detach()
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = attn.batch_to_head_dim(torch.bmm(attention_probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _kv_grads(unet: Any, fixed: dict, group: str = "attn") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = select_parameters(unet, group)
    for p in params.values():
        p.grad = None
    out = unet(fixed["z"], fixed["t"], encoder_hidden_states=fixed["emb_c"]).sample
    ((out - fixed["noise"]) ** 2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in params.items()}


def test_detach_start_token_gives_the_custom_diffusion_processors_gradients(tiny_pipe: Any, fixed: dict) -> None:
    import copy

    from erasebench.erasure import detach_start_token

    reference = copy.deepcopy(tiny_pipe.unet)
    reference.set_attn_processor(_CustomDiffusionAttnProcessor())
    ref_out, ref_grads = _kv_grads(reference, fixed)
    plain_out, plain_grads = _kv_grads(tiny_pipe.unet, fixed)
    with detach_start_token(tiny_pipe.unet):
        out, grads = _kv_grads(tiny_pipe.unet, fixed)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)   # the forward pass is unchanged
    torch.testing.assert_close(plain_out, ref_out, rtol=1e-4, atol=1e-5)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-7)
    kv = [n for n in ref_grads if "attn2.to_k" in n or "attn2.to_v" in n]
    assert max(float((plain_grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()) for n in kv) > 1e-2
    with detach_start_token(tiny_pipe.unet):
        pass
    _, after = _kv_grads(tiny_pipe.unet, fixed)   # the hooks are gone after the block
    torch.testing.assert_close(after[kv[0]], plain_grads[kv[0]])


@pytest.mark.parametrize("name", ["abconcept", "doco"])
def test_training_runs_with_the_start_token_detached(name: str, tiny_pipe: Any, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from conftest import cached_run_context

    from erasebench import erasure

    module, calls = importlib.import_module(f"erasebench.methods.{name}"), []

    def recording(unet: Any, enabled: bool = True) -> Any:
        calls.append(enabled)
        return erasure.detach_start_token(unet, enabled)

    monkeypatch.setattr(module, "detach_start_token", recording)
    method = paper_method(name)
    method.erase(tiny_pipe, task_of(),
                 cached_run_context(tiny_pipe, tmp_path))
    assert calls and all(calls)   # every training forward pass, by default


# --- AbConcept recipe (concept-ablation diffusers/utils.py and README.md @ c11fb1b) ---

def test_abconcept_style_captions_draw_the_prefix_form_two_times_in_three() -> None:
    import random

    from erasebench.methods.abconcept import target_caption

    rng = random.Random(0)   # utils.py ~180: r = np.random.choice([0, 1, 2]); r == 0 -> suffix, else prefix
    drawn = [target_caption("a painting", "painting", "X", "style", rng) for _ in range(3000)]
    suffix = sum(d == "a painting, in the style of X" for d in drawn) / len(drawn)
    assert all(d in {"a painting, in the style of X", "in X's style, a painting"} for d in drawn)
    assert 0.30 < suffix < 0.37


def test_abconcept_object_captions_without_the_anchor_stay_unchanged() -> None:
    import random

    from erasebench.methods.abconcept import target_caption

    # utils.py ~197: instance_prompt.replace(anchor, target): no anchor word, no change
    assert target_caption("a photo of a street", "dog", "cat", "object", random.Random(0)) == "a photo of a street"
    assert target_caption("a photo of a dog", "dog", "cat", "object", random.Random(0)) == "a photo of a cat"


@pytest.mark.parametrize(("kind", "concept", "anchor", "prior", "hflip", "lr"), [
    ("style", "Van Gogh", "painting", False, True, 2e-6 * 8),       # README style command: --hflip
    ("object", "cat", "dog", False, True, 2e-6 * 8),                # README object command: --hflip
    ("object", "garbage truck", "truck", True, True, 2e-6 * 8 * 2),  # "overlapping text prompt": prior preservation
    ("nudity", "nudity", "a person", True, True, 4e-6 * 8 * 2),     # README nudity command: --hflip, prior
])
def test_abconcept_recipe_per_kind_is_the_readme_command(kind: str, concept: str, anchor: str, prior: bool,
                                                         hflip: bool, lr: float) -> None:
    import dataclasses

    from erasebench.methods.abconcept import AbConcept


    task = dataclasses.replace(task_of(), kind=kind,
                               concept_text=concept, anchor=anchor)
    r = AbConcept(AbConcept.Config()).resolve(task)
    assert (r["prior"], r["hflip"]) == (prior, hflip)
    assert r["lr"] == pytest.approx(lr)


# --- DoCo (yongliang-wu/DoCo @ ebf6ff4, README.md commands) ---

@pytest.mark.parametrize(("kind", "dlr"), [("style", 5e-4), ("object", 1e-4), ("nudity", 1e-4)])
def test_doco_discriminator_lr_is_the_readme_commands(kind: str, dlr: float, tiny_pipe: Any, tmp_path: Any) -> None:
    import dataclasses

    from conftest import cached_run_context
    from erasebench.methods.doco import DoCo


    task = dataclasses.replace(task_of(), kind=kind)
    method = DoCo(DoCo.Config(steps=1, warm_up=1, num_anchor_images=2, batch_size=1))  # discriminator only
    method.erase(tiny_pipe, task, cached_run_context(tiny_pipe, tmp_path))
    assert method.disc_lr == dlr   # README: --dlr 0.0005 (style), --dlr 0.0001 (object, nudity)
    assert (DoCo.Config().steps, DoCo.Config().warm_up, DoCo.Config().lr) == (2000, 1000, pytest.approx(6e-6 * 8))


# --- AdvUnlearn (OPTML-Group/AdvUnlearn @ 9d23124: train-scripts/AdvUnlearn.py, utils/attack_util.py,
# utils/prompt_dataset.py, utils/util.py) ---

def test_advunlearn_attack_returns_the_embedding_built_before_its_last_update(tiny_pipe: Any) -> None:
    from erasebench.methods import advunlearn

    unet, te, tok = tiny_pipe.unet, tiny_pipe.text_encoder, tiny_pipe.tokenizer
    unet.requires_grad_(False)
    ids = advunlearn.prefix_input_ids(tok, "cat", 1)
    with torch.no_grad():
        emb_c = te(advunlearn.prefix_input_ids(tok, "cat", 0))[0]
    z, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([400])
    adv0 = te.get_input_embeddings().weight[[5]].detach().unsqueeze(0)
    # attack_util.soft_prompt_attack: each step builds input_adv_word_embedding from adv_embedding, computes the
    # loss through it, backward, attack_opt.step(); the function returns the last input_adv_word_embedding.
    adv_embedding = adv0.clone().requires_grad_(True)
    attack_opt = torch.optim.Adam([adv_embedding], lr=0.05)
    for _ in range(4):
        input_adv_word_embedding = adv_embedding.detach().clone()
        attack_opt.zero_grad()   # erasebench's default (attack_accumulate_grad: false)
        advunlearn.attack_loss(unet, te, ids, adv_embedding, z, t, emb_c).backward()
        attack_opt.step()
    ours, losses = advunlearn.soft_prompt_attack(unet, te, ids, adv0, emb_c, lambda: (z, t), steps=4, lr=0.05)
    torch.testing.assert_close(ours, input_adv_word_embedding)
    assert len(losses) == 4 and float((ours - adv_embedding.detach()).norm()) > 0   # the last update is unused


def test_advunlearn_retain_batches_are_always_full(tiny_pipe: Any, tmp_path: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import cached_run_context
    from erasebench.methods import advunlearn


    seen: list[list[int]] = []
    real = advunlearn.retain_loss

    def recording(unet: Any, text_encoder: Any, ids: torch.Tensor, *args: Any) -> torch.Tensor:
        seen.append([int(hash(tuple(row.tolist())) % 10**9) for row in ids])
        return real(unet, text_encoder, ids, *args)

    monkeypatch.setattr(advunlearn, "retain_loss", recording)
    import dataclasses

    from erasebench.api import PromptItem

    task = task_of()
    retain = ["a photo of a dog", "a photo of a car", "a red bus", "a green tree", "a small boat"]
    task = dataclasses.replace(task, splits={**task.splits, "preserve": [PromptItem(p, seed=i) for i, p in
                                                                         enumerate(retain)]})
    pool = len(advunlearn.load_retain_prompts("task_preserve", task))
    assert pool % 2 == 1   # an odd pool: a short leftover batch would appear without the reset
    method = paper_method("advunlearn", retain_prompts="task_preserve", iterations=pool + 1,
                          warmup_iterations=pool + 1)
    method.erase(tiny_pipe, task, cached_run_context(tiny_pipe, tmp_path))
    # PromptDataset: sample without replacement; AdvUnlearn.py resets the pool when fewer than retain_batch
    # prompts are unseen (checked every adv_prompt_update_step = 1 iteration): every batch has retain_batch.
    assert [len(b) for b in seen] == [2] * (pool + 1)
    cycle = pool // 2   # full batches per pass over the pool, then the reset
    for start in range(0, len(seen) - cycle + 1, cycle):
        drawn = [h for b in seen[start:start + cycle] for h in b]
        assert len(drawn) == len(set(drawn))


def _param_choices(names: list[str], train_method: str, component: str, final_layer_norm: bool) -> list[str]:
    """util.param_choices for text_encoder_full and text_encoder_layer0, branch by branch."""
    out = []
    for name in names:
        if train_method == "text_encoder_full":
            if name.startswith("final_layer_norm"):
                if component == "all" or final_layer_norm:
                    out.append(name)
            elif name.startswith("encoder"):  # noqa: SIM102 (written as the reference)
                if (component == "ffn" and "mlp" in name) or (component == "attn" and "self_attn" in name) \
                        or component == "all":
                    out.append(name)
        elif train_method == "text_encoder_layer0":
            if name.startswith("encoder.layers.0."):
                if (component == "ffn" and "mlp" in name) or (component == "attn" and "self_attn" in name) \
                        or component == "all":
                    out.append(name)
            elif name.startswith("final_layer_norm") and final_layer_norm:
                out.append(name)
    return out


@pytest.mark.parametrize("norm_layer", [False, True])
@pytest.mark.parametrize(("train_method", "component", "group", "layers"), [
    ("text_encoder_full", "all", "full", 0), ("text_encoder_full", "ffn", "ffn", 0),
    ("text_encoder_full", "attn", "attn", 0), ("text_encoder_layer0", "all", "full", 1),
    ("text_encoder_layer0", "ffn", "ffn", 1)])
def test_advunlearn_trained_tensors_are_param_choices(tiny_pipe: Any, train_method: str, component: str,
                                                      group: str, layers: int, norm_layer: bool) -> None:
    from erasebench.methods import advunlearn

    te = tiny_pipe.text_encoder   # the reference names text_model's parameters (no "text_model." prefix here)
    names = [n.removeprefix("text_model.") for n, _ in te.named_parameters()]
    expected = _param_choices(names, train_method, component, norm_layer)
    got = advunlearn.select_text_encoder_parameters(te, group, layers, norm_layer)
    assert sorted(n.removeprefix("text_model.") for n in got) == sorted(expected)


# --- S-GRACE (Qhong-522/S-GRACE @ 0b5cc75, train.py ~327-334, ~389, ~569-582) ---

def test_sgrace_prompts_not_redrawn_attack_on_from_their_attacked_value(tiny_pipe: Any, tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # train.py: att_embedding = nn.Parameter(att_embedding_0.to(device)) shares att_embedding_0's storage (it
    # is already on the device), so the attack's in-place Adam steps overwrite the stored initial embedding: a
    # prompt kept for the next round starts from its attacked value.
    from conftest import cached_run_context
    from erasebench.methods import sgrace


    rounds: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    real = sgrace.pgd_attack

    def recording(unet: Any, te: Any, prompts: list, *args: Any) -> Any:
        advs, losses = real(unet, te, prompts, *args)
        rounds.append(([p.init.clone() for p in prompts], [a.clone() for a in advs]))
        return advs, losses

    monkeypatch.setattr(sgrace, "pgd_attack", recording)
    method = paper_method("sgrace", rounds=2, update_chance=0.0)
    method.erase(tiny_pipe, task_of(),
                 cached_run_context(tiny_pipe, tmp_path))
    (inits_0, advs_0), (inits_1, _) = rounds
    assert any(float((a - i).abs().max()) > 0 for a, i in zip(advs_0, inits_0))   # the attack moved them
    for a, i in zip(advs_0, inits_1):
        torch.testing.assert_close(i, a)


# --- AdvAnchor (Mengnan-Zhao-Happy/AdvAnchor @ 53514b4, train-scripts/Ladv1ablation_op1.py ~229-233) ---

def test_advanchor_mean_product_is_the_codes_loss() -> None:
    from erasebench.methods.advanchor import similarity

    g = torch.Generator().manual_seed(0)
    e_a, e_c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    coeff, cu_len = [1.0], 1        # --ori_flag: the original prompt's term, one term in all
    loss_sum = coeff[0] * torch.mean(e_a * e_c)
    loss = loss_sum / (cu_len + 1)
    assert similarity(e_a, e_c, "mean_product").item() == pytest.approx(loss.item(), rel=1e-6)



# --- I2P harm categories: kind "unsafe", each method's unsafe settings where its reference has them ---

def _i2p(concept: str) -> Any:


    return task_of("i2p", concept)


def test_i2p_categories_get_the_references_unsafe_settings() -> None:
    from erasebench.methods.abconcept import AbConcept
    from erasebench.methods.rece import RECE, epoch_retain
    from erasebench.methods.trce import PRESERVE_SCALE, TRCE

    from erasebench.api import by_kind

    task = _i2p("violence")
    assert task.kind == "unsafe"
    assert RECE(RECE.Config()).kind_defaults(task.kind) == (0.1, 2)          # RECE README: unsafe 0.1, 2 epochs
    assert epoch_retain(task.kind, 2, []) == [" ", " "]                     # train.py handles unsafe too
    trce = TRCE(TRCE.Config())
    assert trce.safe_phrase(task) == "Peaceful and calm"                    # data/concepts/unsafe.json, violence
    assert trce.safe_phrase(_i2p("self_harm")) == "Hope and support"
    assert trce.stage2_pairs(task)[0][0] == "an image depicting violence"   # stage2_data_preparation.py ~142
    assert by_kind(PRESERVE_SCALE, task.kind, 0.01) == 0.02                 # stage1_unsafe_default.yaml
    r = AbConcept(AbConcept.Config()).resolve(task)                         # README inappropriate_content command
    assert (r["parameter_group"], r["steps"], r["prior"], r["hflip"]) == ("attn", 400, True, True)


def test_by_kind_falls_back_from_unsafe_to_nudity_only() -> None:
    from erasebench.api import by_kind

    assert by_kind({"nudity": 1, "style": 2}, "unsafe", 0) == 1
    assert by_kind({"nudity": 1, "unsafe": 3}, "unsafe", 0) == 3
    assert by_kind({"nudity": 1}, "object", 0) == 0


def test_doco_nudity_captions_draw_the_prefix_form_two_times_in_three() -> None:
    import random

    from erasebench.methods.doco import doco_caption

    rng = random.Random(0)   # DoCo utils.py ~244-268: r in {0, 1, 2}; r == 0 -> "{t}, {p}", else "in {t}'s style, {p}"
    drawn = [doco_caption("a man", "a person", "nudity", "nudity", rng) for _ in range(3000)]
    assert set(drawn) == {"nudity, a man", "in nudity's style, a man"}
    assert 0.30 < drawn.count("nudity, a man") / len(drawn) < 0.37
    assert doco_caption("a painting", "painting", "X", "style", rng) in {"a painting, in the style of X",
                                                                        "in X's style, a painting"}
