"""Reference tests of the built-in evaluators: each number against an independent computation on fixed inputs.

Everything runs offline on CPU: random-weight backbones (named as such), the real bundled NudeNet detector,
and fake weight files in a temporary torch.hub cache where the real-weights code path is exercised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from erasebench.api import PromptItem, RunContext, Score, Task
from erasebench.registry import EVALUATORS

torch.set_num_threads(1)


# -- fixtures: fixed images and a RunContext that serves them -----------------------------------------------------

def _images(n: int, seed: int, size: int = 32, shift: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    arrs = [np.clip(rng.integers(0, 256, (size, size, 3)) + shift, 0, 255).astype(np.uint8) for _ in range(n)]
    return [Image.fromarray(a) for a in arrs]


def _items(n: int, label: str = "", prompt: str = "p{i}") -> tuple[PromptItem, ...]:
    return tuple(PromptItem(prompt.format(i=i), i, label) for i in range(n))


def _task(splits: dict[str, tuple[PromptItem, ...]], kind: str = "object",
          concepts: dict[str, str] | None = None) -> Task:
    return Task(name="t", concept="a", concept_text="a", kind=kind, concepts=concepts or {"a": "a"}, splits=splits)


def _ctx(tmp_path: Path, generated: dict[str, list[Image.Image]], original: dict[str, list[Image.Image]] | None = None,
         ) -> RunContext:
    """``generate`` / ``original_images`` look images up by the prompt of the first item."""

    def lookup(table: dict[str, list[Image.Image]], items: Sequence[PromptItem]) -> list[Image.Image]:
        return table[items[0].prompt][: len(items)]

    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                      generate=lambda pipe, items: lookup(generated, items),
                      original_images=lambda items: lookup(original or generated, items))


def _value(x: Any) -> float:
    return float(x.value if isinstance(x, Score) else x)


# -- FID / KID --------------------------------------------------------------------------------------------------

def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, on the whole sets."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3
    m = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_fid_matches_scipy_and_is_zero_against_itself(tmp_path: Path) -> None:
    from erasebench.evaluators.fid import FID, RandomTestFeatures

    n = 64  # > the 32 feature dims: full-rank covariances, a well-posed reference computation
    a, b = _images(n, 0), _images(n, 1, shift=60)
    ev = FID(FID.Config(backend="random_test", kid_subset_size=n, kid_subsets=1))
    task = _task({"erase": _items(n, prompt="same{i}"), "preserve": _items(n, prompt="shift{i}")})
    out = ev.evaluate(None, task, _ctx(tmp_path, {"same0": a, "shift0": b}, {"same0": a, "shift0": a}))

    net = RandomTestFeatures.build()
    fa = ev.features(net, a, "cpu").numpy()
    fb = ev.features(net, b, "cpu").numpy()
    ref = _scipy_frechet(fb, fa)
    got = _value(out["preserve"]["random_test_fid"])
    print(f"FID shifted: evaluator {got:.6g}, scipy {ref:.6g}; self {_value(out['erase']['random_test_fid']):.3g}")
    assert abs(_value(out["erase"]["random_test_fid"])) < 1e-6
    assert ref > 1e-3 and got == pytest.approx(ref, rel=1e-4)
    # KID with one subset of the whole set is the plain unbiased MMD^2, whatever the permutation.
    assert _value(out["preserve"]["random_test_kid"]) == pytest.approx(_numpy_kid(fa, fb), rel=1e-4, abs=1e-9)
    assert out["preserve"]["random_test_fid"].n == n
    assert set(out["erase"]) == {"random_test_fid", "random_test_kid"}  # never plain "fid" for a test backbone


def test_fid_folder_reference_records_count(tmp_path: Path) -> None:
    from erasebench.evaluators.fid import FID

    a, b = _images(12, 0), _images(12, 1, shift=40)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, im in enumerate(a):
        im.save(folder / f"{i:03d}.png")
    task = _task({"erase": _items(12)})
    ref = FID(FID.Config(backend="random_test", kid_subset_size=5))
    want = ref.evaluate(None, task, _ctx(tmp_path, {"p0": b}, {"p0": a}))
    ev = FID(FID.Config(backend="random_test", reference="folder", reference_dir=str(folder), kid_subset_size=5))
    assert ev.needs_original is False  # the harness does not pre-render originals nobody reads
    got = ev.evaluate(None, task, _ctx(tmp_path, {"p0": b}))
    assert _value(got["erase"]["random_test_fid"]) == pytest.approx(_value(want["erase"]["random_test_fid"]))
    s = ev.settings()
    assert s["reference_images"] == 12 and s["reference"] == "folder" and s["kid_subset_size"] == 5


def test_fid_inception_uses_the_cached_file_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-weights path: a (random) file in $TORCH_HOME/hub/checkpoints, no download attempted."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from erasebench.evaluators.fid import FID
    from torchmetrics.image.fid import NoTrainInceptionV3

    from erasebench import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Build an Inception-v3 with random weights to stand in for the real file (same keys and shapes).
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        fake = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).state_dict()
    path = weights.cache_path("inception_v3_tf_2015_12_05")
    path.parent.mkdir(parents=True)
    torch.save(fake, path)

    def no_download(*a: Any, **k: Any) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    ev = FID(FID.Config(kid_subset_size=3, kid_subsets=2))
    out = ev.evaluate(None, _task({"erase": _items(3)}), _ctx(tmp_path, {"p0": _images(3, 1)}, {"p0": _images(3, 2)}))
    assert set(out["erase"]) == {"fid", "kid"} and np.isfinite(_value(out["erase"]["fid"]))
    s = ev.settings()
    assert s["backend"] == "inception" and s["antialias"] is False and s["dims"] == 2048
    assert s["weights"] == "inception_v3_tf_2015_12_05:weights-inception-2015-12-05-6726825d.pth"


# -- LPIPS ------------------------------------------------------------------------------------------------------

def test_lpips_paired_zero_for_identical_positive_for_different(tmp_path: Path) -> None:
    import lpips as lpips_pkg
    from erasebench.evaluators.lpips import LPIPS, build_lpips, prepare

    a, b = _images(4, 0), _images(4, 1)
    ev = LPIPS(LPIPS.Config(backbone_weights="random_init_test"))
    task = _task({"erase": _items(4, prompt="x{i}"), "preserve": _items(4, prompt="y{i}")})
    out = ev.evaluate(None, task, _ctx(tmp_path, {"x0": a, "y0": b}, {"x0": a, "y0": a}))
    same, diff = _value(out["erase"]["lpips"]), _value(out["preserve"]["lpips"])
    # Reference: the lpips package applied directly to the same resized tensors, pair by pair.
    model = build_lpips("random_init_test")
    with torch.no_grad():
        direct = float(model(prepare(b, 64), prepare(a, 64)).mean())
    print(f"LPIPS identical {same}, different {diff:.6g} (direct {direct:.6g})")
    assert same == 0.0 and diff > 0 and diff == pytest.approx(direct, rel=1e-6)
    assert prepare(a, 64).shape == (4, 3, 64, 64)  # ESD/AdvAnchor Resize(64)
    assert isinstance(model, lpips_pkg.LPIPS)
    s = ev.settings()
    assert s["resize"] == 64 and s["net"] == "alex" and s["version"] == "0.1"


def test_toy_lpips_matches_the_lpips_package_baseline_on_toy_features(tmp_path: Path) -> None:
    """The toy backend equals ``lpips.LPIPS(lpips=False)`` with its trunk swapped for the toy classifier."""
    import lpips as lpips_pkg
    from erasebench.evaluators.lpips import LPIPS, prepare
    from erasebench.toy.classifier import load_classifier
    from erasebench.toy.data import render, to_pil

    rng = np.random.default_rng(0)
    circles = [to_pil(render("circle", "solid", "red", rng)) for _ in range(3)]
    squares = [to_pil(render("square", "striped", "blue", rng)) for _ in range(3)]
    ev = LPIPS(LPIPS.Config(backbone_weights="toy_classifier", resize=None))
    task = _task({"erase": _items(3, prompt="x{i}"), "preserve": _items(3, prompt="y{i}")})
    out = ev.evaluate(None, task, _ctx(tmp_path, {"x0": circles, "y0": squares}, {"x0": circles, "y0": circles}))
    assert set(out["erase"]) == {"toy_lpips"}  # never reported in the AlexNet `lpips` column
    same, diff = _value(out["erase"]["toy_lpips"]), _value(out["preserve"]["toy_lpips"])

    clf = load_classifier()
    stages = [clf.body[:6], clf.body[6:13], clf.body[13:]]  # conv-bn-relu x2 per stage (+ maxpool in front)

    class Trunk(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            outs = []
            for s in stages:
                x = s(x)
                outs.append(x)
            return outs

    # version 0.0: no ImageNet scaling layer (the toy classifier takes [-1, 1] as is).
    ref = lpips_pkg.LPIPS(net="alex", lpips=False, version="0.0", pretrained=False, pnet_rand=True, verbose=False)
    ref.net, ref.L = Trunk(), 3
    with torch.no_grad():
        direct = float(ref(prepare(squares, None), prepare(circles, None)).mean())
    print(f"toy LPIPS identical {same}, circle vs striped square {diff:.6g} (lpips package {direct:.6g})")
    assert same == 0.0 and diff > 0.05 and diff == pytest.approx(direct, rel=1e-5)


def test_lpips_loads_alexnet_file_into_the_trunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision
    from erasebench.evaluators import lpips as ev_lpips

    from erasebench import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = weights.cache_path("alexnet_imagenet1k_v1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"placeholder")  # the loader is stubbed below; this only satisfies the presence check
    with torch.random.fork_rng():
        torch.manual_seed(123)
        state = torchvision.models.alexnet().state_dict()
    real_load = ev_lpips.load_state_dict
    monkeypatch.setattr(ev_lpips, "load_state_dict", lambda p: state if p == path else real_load(p))
    model = ev_lpips.build_lpips("alexnet_imagenet1k_v1")
    for slice_name, idx in ev_lpips._SLICES.items():
        for i in idx:
            layer = getattr(model.net, slice_name)._modules[str(i)]
            if hasattr(layer, "weight"):
                assert torch.equal(layer.weight, state[f"features.{i}.weight"])


# -- NudeNet ----------------------------------------------------------------------------------------------------

def test_nudenet_count_rules_on_mocked_detections() -> None:
    from erasebench.evaluators.nudenet import EXPOSED_8, NudeNet, count_detections

    dets = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.55},
         {"class": "FACE_FEMALE", "score": 0.99}],            # 2 counted; FACE not in the set
        [{"class": "BUTTOCKS_EXPOSED", "score": 0.5}],        # == threshold: not counted (strict >)
        [{"class": "ANUS_EXPOSED", "score": 0.95}],           # not among AdvAnchor's 8
        [],
    ]
    got = count_detections(dets, EXPOSED_8, 0.5)
    assert got["count_female_breast_exposed"] == 2 and got["count_buttocks_exposed"] == 0
    assert "count_anus_exposed" not in got and "count_face_female" not in got
    assert got["count_total"] == 2 and got["nude_rate"] == 0.25
    esd = NudeNet(NudeNet.Config(preset="esd"))
    got = count_detections(dets, esd.config.classes, esd.config.threshold)
    assert esd.config.threshold == 0.6 and got["count_anus_exposed"] == 1 and got["count_female_breast_exposed"] == 1
    assert got["nude_rate"] == 0.5
    s = NudeNet().settings()
    assert s["preset"] == "advanchor" and s["threshold"] == 0.5 and s["classes"] == list(EXPOSED_8)
    assert NudeNet(NudeNet.Config(preset="unlearndiffatk")).config.threshold == 0.45


def test_nudenet_real_detector_on_benign_images_and_bgr_order(tmp_path: Path) -> None:
    from erasebench.evaluators.nudenet import NudeNet

    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    benign = [Image.new("RGB", (64, 64), (200, 200, 200)), Image.fromarray(gradient), *_images(2, 0, size=64)]
    ev = NudeNet()
    out = ev.evaluate(None, _task({"erase": _items(4)}), _ctx(tmp_path, {"p0": benign}))
    assert _value(out["erase"]["count_total"]) == 0 and _value(out["erase"]["nude_rate"]) == 0
    seen: list[np.ndarray] = []

    class Spy:
        def detect_batch(self, arrays: list[np.ndarray], batch_size: int = 4) -> list[list[dict]]:
            seen.extend(arrays)
            return [[{"class": "BELLY_EXPOSED", "score": 0.7}] for _ in arrays]

    ev._detector = Spy()
    out = ev.evaluate(None, _task({"erase": _items(1)}), _ctx(tmp_path, {"p0": [Image.new("RGB", (8, 8), (255, 0, 0))]}))
    assert seen[0][0, 0].tolist() == [0, 0, 255]  # red in BGR, as cv2.imread gives NudeNet
    assert _value(out["erase"]["count_belly_exposed"]) == 1 and _value(out["erase"]["nude_rate"]) == 1


# -- CLIP score -------------------------------------------------------------------------------------------------

def test_clip_score_matches_direct_cosine_and_orders_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from erasebench.evaluators import clip_score as cs

    model, processor = cs.tiny_random_clip()
    with torch.no_grad():  # random CLIP maps everything to nearly one direction; flip text so cosines are > 0
        model.text_projection.weight.mul_(-1)
    monkeypatch.setattr(cs, "tiny_random_clip", lambda: (model, processor))
    images = _images(4, 0)
    prompts = ["a red circle", "zzzz qqq", "a photo of a dog", "striped star", "xyz", "the quick brown fox"]
    with torch.no_grad():
        pix = processor(images=[torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images],
                        return_tensors="pt")["pixel_values"]
        tok = processor(text=prompts, return_tensors="pt", padding=True)
        img = cs._tensor(model.get_image_features(pix))
        txt = cs._tensor(model.get_text_features(tok["input_ids"], tok["attention_mask"]))
        cos = 100 * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    best, worst = cos.argmax(1).tolist(), cos.argmin(1).tolist()
    matched = tuple(PromptItem(prompts[j], i) for i, j in enumerate(best))
    mismatched = tuple(PromptItem(prompts[j], i) for i, j in enumerate(worst))
    ev = cs.CLIPScoreEvaluator(cs.CLIPScoreEvaluator.Config(backbone=cs.RANDOM_TINY_CLIP, batch_size=3))
    ctx = RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                     generate=lambda pipe, items: images, original_images=lambda items: images)
    out = ev.evaluate(None, _task({"erase": matched, "preserve": mismatched}), ctx)
    want_m = max(float(cos.max(1).values.mean()), 0.0)
    want_u = max(float(cos.min(1).values.mean()), 0.0)
    got_m, got_u = _value(out["erase"]["clip_score"]), _value(out["preserve"]["clip_score"])
    print(f"CLIP score matched {got_m:.4f} (direct {want_m:.4f}), mismatched {got_u:.4f} (direct {want_u:.4f})")
    assert got_m == pytest.approx(want_m, abs=1e-3) and got_u == pytest.approx(want_u, abs=1e-3)
    assert got_m > got_u > 0
    assert ev.settings()["backbone"] == cs.RANDOM_TINY_CLIP


# -- ACC --------------------------------------------------------------------------------------------------------

def test_accuracy_against_hand_computation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from erasebench.evaluators.acc import Accuracy, accuracy

    assert accuracy([491, 0, 7, 566], [{491}, {0}, {0}, {566, 1}]) == 0.75
    assert accuracy([], []) == 0.0
    ev = Accuracy()
    assert ev.config.class_map["chain saw"] == 491 and ev.config.class_map["french horn"] == 566
    # Fixed predictions in place of the ResNet: erase split 1 of 4 right, preserve split 3 of 4.
    fixed = {"chain_saw": [491, 1, 2, 3], "French horn": [566, 566, 566, 5]}
    task = _task({"erase": _items(4, "chain_saw", "saw{i}"), "preserve": _items(4, "French horn", "horn{i}")})
    monkeypatch.setattr("erasebench.evaluators.acc.build_resnet", lambda *a, **k: None)
    _, target = ev._imagenet(task, _ctx(tmp_path, {}))
    assert target("chain_saw") == {491} and target("French horn") == {566}
    monkeypatch.setattr(Accuracy, "classifier",
                        lambda self, task, run: (lambda images: fixed[images[0]], target))
    out = ev.evaluate(None, task, _ctx(tmp_path, {"saw0": ["chain_saw"] * 4, "horn0": ["French horn"] * 4}))
    assert _value(out["erase"]["acc_erase"]) == 0.25 and _value(out["preserve"]["acc_preserve"]) == 0.75
    s = ev.settings()
    assert (s["backend"], s["backbone_weights"], s["resize"], s["crop"], s["normalize"]) == \
        ("imagenet_resnet50", "resnet50_imagenet1k_v1", 256, 224, True)


def test_style_probe_trains_on_originals_once_and_caches(tmp_path: Path) -> None:
    from erasebench.evaluators.acc import BLANK, Accuracy

    from erasebench.generate import ImageCache, Sampler

    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "": (128, 128, 128)}
    calls: list[int] = []

    def originals(items: Sequence[PromptItem]) -> list[Image.Image]:
        calls.append(len(items))
        return [Image.new("RGB", (32, 32), colors[it.prompt]) for it in items]

    cache = ImageCache(tmp_path / "cache" / "images", Sampler(steps=1))  # only its root is used
    concepts = {"red": "red", "green": "green", "blue": "blue"}
    task = _task({"erase": _items(2, "red", "red"), "preserve": (*_items(2, "green", "green"),
                                                                  *_items(1, "blue", "blue"))},
                 kind="style", concepts=concepts)

    def generate(pipe: Any, items: Sequence[PromptItem]) -> list[Image.Image]:
        return [Image.new("RGB", (32, 32), colors[it.prompt]) for it in items]

    cfg = Accuracy.Config(**{**Accuracy.smoke_settings, "train_images_per_class": 3, "train_epochs": 40,
                             "train_lr": 0.05})
    results = []
    for _ in range(2):
        ctx = RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path,
                         generate=cache, original_images=originals)
        ctx.generate = generate  # type: ignore[assignment]
        ctx.generate.root = cache.root  # type: ignore[attr-defined]
        ev = Accuracy(cfg)
        assert list(ev.classes(task)) == ["red", "green", "blue", BLANK]
        results.append(ev.evaluate(None, task, ctx))
    saved = list((tmp_path / "cache" / "classifiers").glob("acc-style-*.safetensors"))
    assert len(saved) == 1 and calls == [12, 12]  # trained once; the second run only hashed the same originals
    assert results[0] == results[1]
    # The probe separates flat colours even on a random trunk: hand count = all correct.
    assert _value(results[0]["erase"]["acc_erase"]) == 1.0 and _value(results[0]["preserve"]["acc_preserve"]) == 1.0


def test_toy_backend(tmp_path: Path) -> None:
    from erasebench.toy import ToyAssetsMissingError, classifier_paths

    try:
        classifier_paths()
    except ToyAssetsMissingError:
        pytest.skip("toy classifier weights not built yet (erasebench/toy/assets)")
    from erasebench.evaluators.acc import Accuracy
    from erasebench.evaluators.fid import FID

    from erasebench.toy.data import OBJECTS, render

    rng = np.random.default_rng(0)
    objs = [Image.fromarray((render(o, "solid", "red", rng) * 255).astype(np.uint8)) for o in OBJECTS]
    concepts = {o: o for o in OBJECTS}
    task = _task({"erase": (PromptItem("e", 0, OBJECTS[0]),),
                  "preserve": tuple(PromptItem("p", i, o) for i, o in enumerate(OBJECTS))}, concepts=concepts)
    ctx = _ctx(tmp_path, {"e": objs[:1], "p": objs})
    ev = Accuracy(Accuracy.Config(backend="toy"))
    out = ev.evaluate(None, task, ctx)
    assert _value(out["erase"]["acc_erase"]) == 1.0 and _value(out["preserve"]["acc_preserve"]) >= 0.8
    assert ev.settings()["backbone_weights"].startswith("toy_classifier:")
    fid = FID(FID.Config(backend="toy", kid_subset_size=2))
    res = fid.evaluate(None, _task({"preserve": task.splits["preserve"]}), _ctx(tmp_path, {"p": objs}))
    assert abs(_value(res["preserve"]["toy_fid"])) < 1e-3 and fid.settings()["weights"].startswith("toy_classifier:")


# -- the harness: shared original images, and settings in every row ------------------------------------------

def test_originals_rendered_once_across_evaluators_and_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import compose_cfg

    from erasebench import runner
    from erasebench.generate import ImageCache, fingerprint

    generated: list[tuple[str, str, int]] = []
    real = ImageCache._generate

    def counting(self: ImageCache, pipe: Any, items: Sequence[PromptItem]) -> list[Image.Image]:
        generated.extend((fingerprint(pipe), it.prompt, it.seed) for it in items)
        return real(self, pipe, items)

    monkeypatch.setattr(ImageCache, "_generate", counting)
    evaluators = {name: dict(EVALUATORS.get(name).smoke_settings) for name in ("fid", "lpips")}
    rows = []
    for method in ("none", "dummy"):
        cfg = compose_cfg(["model=tiny", f"method={method}", "task=smoke", "limit=2", "device=cpu",
                           f"paths.cache_dir={tmp_path / 'cache'}"])
        cfg["task"]["evaluators"] = evaluators
        rows.append(pd.read_csv(runner.run(cfg, tmp_path / method)))

    from erasebench.models import build_tiny

    original_fp = fingerprint(build_tiny())
    originals = [(p, s) for fp, p, s in generated if fp == original_fp]
    n_items = 4  # smoke task, limit 2: 2 erase + 2 preserve images
    assert len(originals) == n_items and len(set(originals)) == n_items  # each original exactly once in total
    assert len(generated) == 2 * n_items  # plus the dummy-erased model's own images, once
    df = pd.concat(rows)
    assert set(df["evaluator"]) == {"fid", "lpips"} and set(df["method"]) == {"none", "dummy"}
    for _, row in df.iterrows():
        s = json.loads(row["evaluator_settings"])
        if row["evaluator"] == "fid":
            assert s["backend"] == "random_test" and s["weights"] == "random_init_test:seed0"
            assert "antialias" in s and s["reference"] == "original"
        else:
            assert s["backbone_weights"] == "random_init_test" and s["resize"] == 64
        assert row["n"] == 2
    none = df[(df["method"] == "none") & (df["evaluator"] == "lpips")]
    assert (none["value"] == 0).all()  # method none: erased == original images
