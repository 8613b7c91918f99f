"""Weight locations and ``erasebench-fetch``: offline errors name the file, the cache path and the fetch command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from erasebench import weights
from erasebench.api import PromptItem, RunContext, Task
from erasebench.errors import MissingFileError

torch.set_num_threads(1)


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch.hub and Hugging Face caches, and any download attempt fails the test."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_download(*a: Any, **k: Any) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path


def _task() -> Task:
    items = (PromptItem("a chain saw", 0, "chain saw"), PromptItem("a chain saw", 1, "chain saw"))
    return Task(name="t", concept="chain saw", concept_text="chain saw", kind="object",
                concepts={"chain saw": "chain saw", "church": "church"}, splits={"erase": items})


def _ctx(tmp_path: Path) -> RunContext:
    def fail(*a: Any) -> list:
        raise AssertionError("images must not be generated before the weights are checked")

    return RunContext(seed=0, device=torch.device("cpu"), dtype=torch.float32, run_dir=tmp_path, generate=fail,
                      original_images=fail)


@pytest.mark.parametrize(("name", "settings", "filename", "selection"), [
    ("fid", {}, "weights-inception-2015-12-05-6726825d.pth", "--evaluators fid"),
    ("lpips", {}, "alexnet-owt-7be5be79.pth", "--evaluators lpips"),
    ("acc", {}, "resnet50-0676ba61.pth", "--evaluators acc"),
    ("acc", {"backend": "style"}, "resnet18-f37072fd.pth", "--evaluators acc"),
])
def test_missing_torch_hub_weights_message(name: str, settings: dict, filename: str, selection: str,
                                           empty_caches: Path) -> None:
    from erasebench.configs import build_config, evaluator_defaults
    from erasebench.registry import EVALUATORS

    cls = EVALUATORS.get(name)
    ev = cls(build_config(cls, {**evaluator_defaults(name), **settings}, "evaluator"))
    with pytest.raises(MissingFileError) as exc:
        ev.evaluate(None, _task(), _ctx(empty_caches))
    msg = str(exc.value)
    expected_path = empty_caches / "torch" / "hub" / "checkpoints" / filename
    assert filename in msg and str(expected_path) in msg
    assert f"erasebench-fetch {selection}" in msg and f"python -m erasebench.weights {selection}" in msg
    assert "TORCH_HOME" in msg


def test_missing_clip_repo_message(empty_caches: Path) -> None:
    from erasebench.evaluators.clip_score import CLIPScoreEvaluator

    with pytest.raises(MissingFileError) as exc:
        CLIPScoreEvaluator().evaluate(None, _task(), _ctx(empty_caches))
    msg = str(exc.value)
    assert "openai/clip-vit-base-patch32" in msg and str(empty_caches / "hf") in msg
    assert "erasebench-fetch --evaluators clip_score" in msg


def test_table_locations_and_selection(empty_caches: Path) -> None:
    assert weights.cache_path("alexnet_imagenet1k_v1") == \
        Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert weights.keys_for(["fid", "lpips"]) == ["inception_v3_tf_2015_12_05", "alexnet_imagenet1k_v1"]
    assert weights.keys_for(["acc:style"]) == ["resnet18_imagenet1k_v1"]
    assert weights.keys_for(["nudenet", "fid:toy"]) == []  # bundled / shipped: nothing to fetch
    assert weights.model_repo("sd14") == ("CompVis/stable-diffusion-v1-4", None)
    assert weights.model_repo("tiny") is None
    for w in weights.WEIGHTS.values():  # torchvision's convention: the file name ends in the SHA-256 prefix
        if w.sha256_prefix:
            assert w.filename.endswith(f"-{w.sha256_prefix}.pth")


def test_fetch_cli_check_fetch_and_errors(empty_caches: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert weights.main(["--check", "--evaluators", "lpips,nudenet"]) == 1
    assert "MISSING\talexnet_imagenet1k_v1" in capsys.readouterr().out

    calls: list[tuple] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"x")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert weights.main(["--evaluators", "lpips"]) == 0
    dst = weights.cache_path("alexnet_imagenet1k_v1")
    assert calls == [("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", str(dst), "7be5be79")]
    assert weights.main(["--check", "--evaluators", "lpips"]) == 0
    assert weights.main(["--evaluators", "lpips"]) == 0 and len(calls) == 1  # present: not fetched again

    hf_calls: list[dict] = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **k: hf_calls.append({"repo": repo, **k}) or str(empty_caches / "snap"))
    assert weights.main(["--evaluators", "clip_score:openai/clip-vit-large-patch14"]) == 0
    assert hf_calls[0]["repo"] == "openai/clip-vit-large-patch14" and "*.safetensors" in hf_calls[0]["allow_patterns"]

    assert weights.main(["--evaluators", "fdi"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert weights.main([]) == 2
