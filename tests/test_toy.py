"""Tests of the toy concept world (data, tokenizer, shipped weights, training script)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from erasebench.toy import ASSETS_DIR, ToyAssetsMissingError, load_pipeline, pipeline_path
from erasebench.toy.data import (COLOR_NAMES, OBJECTS, STYLES, object_prompts, render,
                                 sample_batch, style_prompts, vocabulary)

torch.set_num_threads(1)  # keep the suite polite on small CI machines


def test_constants_have_enough_concepts() -> None:
    assert len(OBJECTS) >= 5 and len(STYLES) >= 5 and len(COLOR_NAMES) >= 3
    for o in OBJECTS:
        assert len(object_prompts(o)) >= 3 and all(o in p for p in object_prompts(o))
    for s in STYLES:
        assert len(style_prompts(s)) >= 3


def test_render_is_deterministic() -> None:
    a = render("star", "striped", "red", np.random.default_rng(3))
    b = render("star", "striped", "red", np.random.default_rng(3))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    x1, c1, o1, s1 = sample_batch(16, np.random.default_rng(7))
    x2, c2, o2, s2 = sample_batch(16, np.random.default_rng(7))
    assert np.array_equal(x1, x2) and c1 == c2 and np.array_equal(o1, o2) and np.array_equal(s1, s2)
    assert x1.shape == (16, 3, 32, 32)


def test_captions_include_empty_and_partial() -> None:
    _, caps, _, _ = sample_batch(400, np.random.default_rng(0))
    frac_empty = sum(c == "" for c in caps) / len(caps)
    assert 0.05 < frac_empty < 0.16
    assert any(c.split()[-1] in OBJECTS and not any(s in c for s in STYLES) for c in caps if c)


def test_tokenizer_pads_and_loads(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from erasebench.toy.tokenizer import build_tokenizer_files

    build_tokenizer_files(vocabulary(), tmp_path)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tok.model_max_length == 77
    ids = tok(["a picture of a checkered star", ""], padding="max_length",
              max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.pad_token_id == tok.eos_token_id
    long_ids = tok(" ".join(["star"] * 200), padding="max_length", max_length=77,
                   truncation=True).input_ids
    assert len(long_ids) == 77
    for w in vocabulary():  # every caption word is a single token
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_missing_assets_error_is_helpful(tmp_path: Path) -> None:
    with pytest.raises(ToyAssetsMissingError, match="erasebench.toy.train"):
        pipeline_path(tmp_path)


def test_checksums_verify() -> None:
    from erasebench.toy.checksums import verify_checksums

    assert verify_checksums(ASSETS_DIR) == []


def test_weights_are_small() -> None:
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*.safetensors"))
    assert total <= 30e6


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    return load_pipeline()


@pytest.fixture(scope="module")
def clf():  # type: ignore[no-untyped-def]
    from erasebench.toy.classifier import load_classifier

    return load_classifier()


def test_pipeline_loads_with_sd_modules(pipe) -> None:  # type: ignore[no-untyped-def]
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    names = [n for n, _ in pipe.unet.named_modules()]
    assert any(n.endswith("attn2.to_k") for n in names)
    assert any(n.endswith("attn2.to_v") for n in names)
    cfg = pipe.scheduler.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == (
        1000, "scaled_linear", 0.00085, 0.012)
    assert pipe.vae_scale_factor == 4


def test_classifier_accuracy_on_fresh_images(clf) -> None:  # type: ignore[no-untyped-def]
    from erasebench.toy.classifier import accuracy_on_fresh, classify
    from erasebench.toy.data import to_pil

    acc_o, acc_s = accuracy_on_fresh(clf, 500, seed=12345)
    assert acc_o >= 0.98 and acc_s >= 0.98, (acc_o, acc_s)
    imgs, _, obj, sty = sample_batch(8, np.random.default_rng(1))
    po, ps = classify([to_pil(im.transpose(1, 2, 0)) for im in imgs])
    assert po.shape == (8,) and (po.numpy() == obj).mean() >= 0.75
    assert clf.features(torch.from_numpy(imgs)).shape == (8, clf.cfg.feature_dim)


@pytest.fixture(scope="module")
def gen_eval(pipe, clf):  # type: ignore[no-untyped-def]
    from erasebench.toy.sample_grid import evaluate_pipeline

    # The toy model's default sampler (conf/model/toy.yaml): DDIM 25 steps, CFG 5.0.
    return evaluate_pipeline(pipe, clf, n_per_concept=6, seed=0, steps=25, guidance=5.0)


def test_pipeline_generates_requested_objects(gen_eval) -> None:  # type: ignore[no-untyped-def]
    assert gen_eval["object_acc"] >= 0.9, gen_eval["per_concept"]


def test_pipeline_generates_requested_styles(gen_eval) -> None:  # type: ignore[no-untyped-def]
    assert gen_eval["style_acc"] >= 0.9, gen_eval["per_concept"]


def test_train_script_end_to_end(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from erasebench.toy.checksums import verify_checksums
    from erasebench.toy.train import main

    main(["--out", str(tmp_path), "--vae-steps", "2", "--vae-batch", "4", "--dataset-size", "64",
          "--unet-steps", "2", "--unet-batch", "4", "--clf-steps", "2", "--clf-eval-n", "16",
          "--eval-n", "0"])
    for rel in ("pipeline/model_index.json", "classifier.safetensors", "classifier.json",
                "train_config.json", "SHA256SUMS"):
        assert (tmp_path / rel).exists(), rel
    assert verify_checksums(tmp_path) == []
    p = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipeline"))
    p.set_progress_bar_config(disable=True)
    out = p("a red star", num_inference_steps=2, output_type="np",
            generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)
