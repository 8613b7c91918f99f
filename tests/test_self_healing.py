"""Damaged artefacts heal themselves: a bad cached PNG, erased-tensors file or metrics.csv is moved aside
(``*.corrupt``) with one warning naming it and the work that made it is redone, and a failed write leaves
no temporary file behind."""

from __future__ import annotations

import copy
import errno
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from erasebench.api import PromptItem
from erasebench.errors import CorruptFileError
from erasebench.generate import ImageCache, Sampler, fingerprint, png_intact, weight_digests
from erasebench.erased import load_erased, save_erased
from erasebench.results import COLUMNS, atomic_write_text, finished_hash, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose_cfg  # noqa: E402

SAMPLER = Sampler(steps=2, height=32, width=32)
ITEMS = [PromptItem("a photo of a lighthouse", seed=3), PromptItem("a drawing of a lighthouse", seed=4)]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "erasebench" and r.levelno == logging.WARNING]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _full_disk(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# --- (a) cached images -----------------------------------------------------------------------------------

def _truncated(png: bytes) -> bytes:
    return png[: len(png) // 2]


def _garbage(png: bytes) -> bytes:
    return bytes(range(256)) * 4


def _broken_stream(png: bytes) -> bytes:
    # Signature and IEND intact (the cheap check passes), the compressed pixels zeroed: only decoding fails.
    at = png.index(b"IDAT")
    size = int.from_bytes(png[at - 4 : at], "big")
    return png[: at + 4] + bytes(size) + png[at + 4 + size :]


@pytest.mark.parametrize("damage", [_truncated, _garbage, _broken_stream])
def test_a_damaged_cached_png_is_quarantined_and_rendered_again(tiny_pipe: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture,
                                                                damage: Callable[[bytes], bytes]) -> None:
    cache = ImageCache(tmp_path, SAMPLER, batch_size=1, progress=False)
    first = cache(tiny_pipe, ITEMS)
    path = cache.paths(tiny_pipe, ITEMS)[0]
    good = path.read_bytes()
    path.write_bytes(damage(good))
    with caplog.at_level(logging.WARNING, logger="erasebench"):
        again = cache(tiny_pipe, ITEMS)
    assert path.read_bytes() == good  # the same bytes as the first render: the seed is the item's
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, first))
    assert cache.generated == 3  # only the damaged image was rendered again
    assert Path(f"{path}.corrupt").read_bytes() == damage(good)
    (line,) = _warnings(caplog)
    assert str(path) in line and f"{path}.corrupt" in line


def test_the_all_cached_path_checks_every_file_and_quarantined_copies_match_no_png_glob(tiny_pipe: Any,
                                                                                       tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, SAMPLER, batch_size=1, progress=False)
    paths = cache.paths(tiny_pipe, ITEMS)
    good = paths[1].read_bytes()
    for _ in range(2):
        paths[1].write_bytes(good[:-1])  # one byte short: only the IEND chunk's CRC is cut
        assert cache.paths(tiny_pipe, ITEMS) == paths
        assert paths[1].read_bytes() == good
    assert sorted(p.name for p in tmp_path.rglob("*.corrupt*")) == [f"{paths[1].name}.corrupt",
                                                                    f"{paths[1].name}.corrupt.1"]
    assert cache.generated == 4
    assert sorted(tmp_path.rglob("*.png")) == sorted(paths)
    assert not _temp_files(tmp_path)


def test_cached_images_of_other_weights_are_checked_too(tiny_pipe: Any, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, SAMPLER, batch_size=1, progress=False)
    first = cache(tiny_pipe, ITEMS)
    weights = fingerprint(tiny_pipe)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(cache.cached(weights, ITEMS), first))
    path = cache.paths(tiny_pipe, ITEMS)[1]
    path.write_bytes(_broken_stream(path.read_bytes()))
    assert cache.cached(weights, ITEMS) is None  # the caller renders them through the cache instead
    assert Path(f"{path}.corrupt").exists() and not path.exists()
    path.write_bytes(_truncated(path.with_name(f"{path.name}.corrupt").read_bytes()))
    assert cache.cached(weights, ITEMS) is None


# --- (b) erased tensors ------------------------------------------------------------------------------------

def _saved_run(master: Any, run: Path) -> dict[str, torch.Tensor]:
    # A run whose method edited unet.conv_in; returns the edited tensors.
    pipe = copy.deepcopy(master)
    before = weight_digests(pipe)
    with torch.no_grad():
        pipe.unet.conv_in.weight.add_(0.01)
        pipe.unet.conv_in.bias.add_(0.01)
    assert save_erased(pipe, before, run, {"method_hash": "abc"}) == ["unet.conv_in.bias", "unet.conv_in.weight"]
    return {"unet.conv_in.bias": pipe.unet.conv_in.bias.detach().clone(),
            "unet.conv_in.weight": pipe.unet.conv_in.weight.detach().clone()}


def _damage_tensors(path: Path, edited: dict[str, torch.Tensor], how: str) -> None:
    from safetensors.torch import save_file

    bias, weight = edited["unet.conv_in.bias"], edited["unet.conv_in.weight"]
    # Each damaged file but the truncated one holds a good tensor sorted before the bad one, so a loader
    # that does not check everything first would have edited the pipeline before failing.
    bad = {"wrong shape": {"unet.conv_in.weight": weight[:, :2].contiguous()},
           "unknown tensor": {"unet.no_such_block.weight": weight},
           "unknown component": {"vocoder.conv_in.weight": weight},
           "integer dtype": {"unet.conv_in.weight": weight.to(torch.int32)}}
    if how == "truncated":
        path.write_bytes(_truncated(path.read_bytes()))
    else:
        save_file({"unet.conv_in.bias": bias, **bad[how]}, str(path))


@pytest.mark.parametrize("how", ["truncated", "wrong shape", "unknown tensor", "unknown component", "integer dtype"])
def test_a_damaged_tensors_file_is_quarantined_and_nothing_is_loaded(_tiny_master: Any, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     how: str) -> None:
    edited = _saved_run(_tiny_master, tmp_path / "run")
    path = tmp_path / "run/erased/tensors.safetensors"
    _damage_tensors(path, edited, how)
    damaged = path.read_bytes()
    fresh = copy.deepcopy(_tiny_master)
    with caplog.at_level(logging.WARNING, logger="erasebench"):
        assert load_erased(fresh, tmp_path / "run", "abc") is False  # the caller erases again
    assert weight_digests(fresh) == weight_digests(_tiny_master)  # not one tensor was loaded
    assert Path(f"{path}.corrupt").read_bytes() == damaged and not path.exists()
    (line,) = _warnings(caplog)
    assert str(path) in line and f"{path}.corrupt" in line


def test_unreadable_erased_meta_is_quarantined(_tiny_master: Any, tmp_path: Path) -> None:
    _saved_run(_tiny_master, tmp_path / "run")
    meta = tmp_path / "run/erased/meta.json"
    meta.write_text('{"method_hash": "ab')
    fresh = copy.deepcopy(_tiny_master)
    assert load_erased(fresh, tmp_path / "run", "abc") is False
    assert weight_digests(fresh) == weight_digests(_tiny_master)
    assert Path(f"{meta}.corrupt").exists() and not meta.exists()


def test_a_floating_tensor_in_another_precision_is_cast_not_rejected(_tiny_master: Any, tmp_path: Path) -> None:
    # Pins the documented dtype rule (the original loader accepted this too).
    from safetensors.torch import save_file

    edited = _saved_run(_tiny_master, tmp_path / "run")
    half = {k: v.half() for k, v in edited.items()}
    save_file(half, str(tmp_path / "run/erased/tensors.safetensors"))
    fresh = copy.deepcopy(_tiny_master)
    assert load_erased(fresh, tmp_path / "run", "abc")
    assert torch.equal(fresh.unet.conv_in.weight, half["unet.conv_in.weight"].float())


# --- (c) metrics.csv ---------------------------------------------------------------------------------------

def _metrics_text(tmp_path: Path, rows: int = 3) -> str:
    from erasebench.results import write_metrics

    path = tmp_path / "written.csv"
    write_metrics([{"metric": f"m{i}", "value": 0.5 + i, "config_hash": "h1", "n": 4,
                    "finished_at": "2025-01-01T00:00:00+00:00"} for i in range(rows)], path)
    text = path.read_text()
    path.unlink()
    return text


def _damaged_metrics(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    # name -> (file contents, a phrase the error must contain)
    text = _metrics_text(tmp_path)
    lines = text.splitlines(keepends=True)
    no_value = pd.read_csv(io.StringIO(text), dtype=str).drop(columns="value").to_csv(index=False)
    cases = {"empty": ("", "empty"),
             "no value column": (no_value, "value"),
             "cut mid-row": ("".join(lines[:2]) + lines[2][: len(lines[2]) // 2], "mid-row"),
             "cut in the last field": (text[:-8], "mid-row"),  # every field there, the timestamp cut short
             "a short row": ("".join(lines[:2]) + ",".join(lines[2].split(",")[:20]) + "\n", "fields"),
             "header only": (lines[0], "no rows"),
             "a row without hash": (text.replace(",h1,", ",,", 1), "config_hash"),
             "a value that is no number": (text.replace(",0.5,", ",lots,", 1), "not a number")}
    return {**{k: (v.encode(), phrase) for k, (v, phrase) in cases.items()},
            "binary garbage": (bytes(range(256)), "UTF-8")}


CASES = ["empty", "no value column", "cut mid-row", "cut in the last field", "a short row", "header only",
         "a row without hash", "a value that is no number", "binary garbage"]


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_metrics_file_is_quarantined_and_the_run_counts_as_unfinished(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    damaged, _ = _damaged_metrics(tmp_path)[case]
    path = tmp_path / "metrics.csv"
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="erasebench"):
        assert finished_hash(tmp_path) is None  # so the runner redoes the run
    assert Path(f"{path}.corrupt").read_bytes() == damaged and not path.exists()
    (line,) = _warnings(caplog)
    assert str(path) in line and f"{path}.corrupt" in line


@pytest.mark.parametrize("case", CASES)
def test_read_metrics_names_the_file_and_what_is_wrong(tmp_path: Path, case: str) -> None:
    damaged, phrase = _damaged_metrics(tmp_path)[case]
    path = tmp_path / "metrics.csv"
    path.write_bytes(damaged)
    with pytest.raises(CorruptFileError) as err:
        read_metrics(path)
    assert str(path) in str(err.value) and phrase in str(err.value) and "\n" not in str(err.value)
    assert path.exists()  # reading alone moves nothing


def test_nan_and_inf_values_are_legitimate(tmp_path: Path) -> None:
    # An evaluator may produce them; only a value that is no number at all is damage (passes on the old code).
    text = _metrics_text(tmp_path).replace(",0.5,", ",,", 1).replace(",1.5,", ",inf,", 1)
    (tmp_path / "metrics.csv").write_text(text)
    assert finished_hash(tmp_path) == "h1"
    frame = read_metrics(tmp_path / "metrics.csv")
    assert list(frame.columns) == COLUMNS and np.isnan(frame["value"][0]) and frame["value"][1] == np.inf


# --- (d) temporary files -----------------------------------------------------------------------------------

def test_atomic_write_text_leaves_no_temp_file_when_writing_or_renaming_fails(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    target = tmp_path / "out.txt"
    target.write_text("old")
    real_write = Path.write_text

    def half_then_full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write(self, text[:3], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    for obj, name, fake in ((Path, "write_text", half_then_full), (os, "replace", _full_disk)):
        with monkeypatch.context() as m:
            m.setattr(obj, name, fake)
            with pytest.raises(OSError, match="No space"):
                atomic_write_text(target, "new text")
        assert target.read_text() == "old" and not _temp_files(tmp_path)


def test_a_failed_image_save_leaves_no_temp_file(tiny_pipe: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_full(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = ImageCache(tmp_path, SAMPLER, batch_size=1, progress=False)
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", half_then_full)
        with pytest.raises(OSError, match="No space"):
            cache.paths(tiny_pipe, ITEMS)
    assert not _temp_files(tmp_path) and not list(tmp_path.rglob("*.png"))
    assert all(png_intact(p) for p in cache.paths(tiny_pipe, ITEMS))  # the disk has room again


def test_a_failed_tensor_save_leaves_no_temp_file(_tiny_master: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import safetensors.torch

    def half_then_full(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"\x08\x00\x00\x00")
        raise OSError(errno.ENOSPC, "No space left on device")

    pipe = copy.deepcopy(_tiny_master)
    before = weight_digests(pipe)
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(0.01)
    for obj, name, fake in ((safetensors.torch, "save_file", half_then_full), (os, "replace", _full_disk)):
        with monkeypatch.context() as m:
            m.setattr(obj, name, fake)
            with pytest.raises(OSError, match="No space"):
                save_erased(pipe, before, tmp_path / "run", {"method_hash": "abc"})
        assert not _temp_files(tmp_path) and not (tmp_path / "run/erased/tensors.safetensors").exists()


# --- end to end --------------------------------------------------------------------------------------------

def test_a_rerun_heals_a_damaged_image_tensors_file_and_metrics_file(tmp_path: Path) -> None:
    from erasebench import runner

    cfg = compose_cfg(["model=tiny", "task=smoke", "method=dummy", "limit=1", f"paths.cache_dir={tmp_path / 'cache'}"])
    run = tmp_path / "run"
    runner.run(cfg, run)
    shown = sorted((run / "images").rglob("*.png"))[0].read_bytes()  # an image the run used (a cache link)
    png = next(p for p in sorted((tmp_path / "cache/images").glob("*/*.png")) if p.read_bytes() == shown)
    tensors, metrics = run / "erased/tensors.safetensors", run / "metrics.csv"
    finished = read_metrics(metrics)["config_hash"].unique().tolist()
    for path in (png, tensors):
        path.write_bytes(_truncated(path.read_bytes()))
    metrics.write_text("")
    runner.run(cfg, run)
    assert read_metrics(metrics)["config_hash"].unique().tolist() == finished
    for path in (png, tensors, metrics):
        assert Path(f"{path}.corrupt").exists()
    assert png_intact(png) and all(png_intact(p) for p in (run / "images").rglob("*.png"))
    assert read_metrics(metrics)["value"].notna().all()


def test_png_intact_checks_signature_and_end_without_decoding(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    assert png_intact(png)
    assert not png_intact(tmp_path / "missing.png")
