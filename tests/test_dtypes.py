"""bfloat16 on CPU: generation and a trained method, so dtype bugs show before a GPU run does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import paper_method, task_of

from erasebench.api import RunContext
from erasebench.generate import ImageCache, Sampler, weight_digests


@pytest.fixture
def bf16_pipe(_tiny_master: Any) -> Any:
    pipe = copy.deepcopy(_tiny_master).to(dtype=torch.bfloat16)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return pipe


def _run(pipe: Any, tmp: Path) -> RunContext:
    cache = ImageCache(tmp / "images", Sampler(steps=4, height=64, width=64), 2, progress=False)
    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.bfloat16, run_dir=tmp, generate=cache,
                      original_images=lambda items: cache(pipe, items), cache_dir=tmp)


def test_bf16_generation_on_cpu(bf16_pipe: Any, tmp_path: Path) -> None:
    images = _run(bf16_pipe, tmp_path).generate(bf16_pipe, task_of().splits["erase"])
    assert [im.size for im in images] == [(64, 64)] * 2
    assert len({im.tobytes() for im in images}) == 2  # two prompts/seeds, two different images


@pytest.mark.parametrize("name", ["esd", "advunlearn"])  # a UNet method and a text-encoder method
def test_bf16_training_on_cpu_keeps_the_dtype_and_trains(name: str, bf16_pipe: Any, tmp_path: Path) -> None:
    method = paper_method(name, lr=1e-3)  # bf16 keeps 8 bits: the paper's lr 1e-5 over 2 steps rounds away
    declared, before = method.trained_tensors(bf16_pipe, task_of()), weight_digests(bf16_pipe)
    out = method.erase(bf16_pipe, task_of(), _run(bf16_pipe, tmp_path))
    assert {p.dtype for m in (out.unet, out.text_encoder) for p in m.parameters()} == {torch.bfloat16}
    changed = {k for k, v in weight_digests(out).items() if before[k] != v}
    assert changed and changed <= declared


def test_nested_trainer_autocast_leaves_autocast_off(bf16_pipe: Any) -> None:
    from erasebench.erasure import Trainer, select_parameters

    trainer = Trainer(select_parameters(bf16_pipe.unet, "xattn"), "adam", 1e-3, 1, desc="test")
    with trainer.autocast:  # AdvUnlearn's attack resamples x_t under the same trainer's autocast
        with trainer.autocast:
            assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")  # a leaked autocast turns every later CPU matmul into bf16
    trainer.finish()
