"""Generation: per-image seeding independent of batching, and the content-addressed cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from erasebench.api import PromptItem
from erasebench.generate import ImageCache, Sampler, fingerprint

SAMPLER = Sampler(steps=3, height=32, width=32)
ITEMS = [PromptItem(f"a photo of thing number {i}", seed=100 + i) for i in range(8)]


def test_image_independent_of_batch_size_and_order(tiny_pipe: Any, tmp_path: Path) -> None:
    batched = ImageCache(tmp_path / "a", SAMPLER, batch_size=8, progress=False)(tiny_pipe, ITEMS)
    alone = ImageCache(tmp_path / "b", SAMPLER, batch_size=1, progress=False)(tiny_pipe, ITEMS[::-1])[::-1]
    for x, y in zip(batched, alone):
        assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 2
    # and the seeds matter: different items give different images
    assert np.abs(np.asarray(batched[0], dtype=int) - np.asarray(batched[1], dtype=int)).mean() > 5


def test_deterministic_on_cpu(tiny_pipe: Any, tmp_path: Path) -> None:
    a = ImageCache(tmp_path / "a", SAMPLER, progress=False)(tiny_pipe, ITEMS[:2])
    b = ImageCache(tmp_path / "b", SAMPLER, progress=False)(tiny_pipe, ITEMS[:2])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_cache_generates_once(tiny_pipe: Any, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, SAMPLER, progress=False)
    cache(tiny_pipe, ITEMS[:4])
    assert cache.generated == 4
    cache(tiny_pipe, ITEMS[:6])  # four cached, two new
    assert cache.generated == 6
    other = ImageCache(tmp_path, Sampler(steps=4, height=32, width=32), progress=False)
    other(tiny_pipe, ITEMS[:1])  # another sampler setting is another cache entry
    assert other.generated == 1


def test_fingerprint_follows_the_weights(tiny_pipe: Any, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, SAMPLER, progress=False)
    fp = fingerprint(tiny_pipe)
    saved = tiny_pipe.unet.conv_in.weight.detach().clone()
    cache(tiny_pipe, ITEMS[:1])
    with torch.no_grad():
        tiny_pipe.unet.conv_in.weight.mul_(0.9)
    assert fingerprint(tiny_pipe) != fp
    cache(tiny_pipe, ITEMS[:1])  # edited weights must not hit the old images
    assert cache.generated == 2
    with torch.no_grad():
        tiny_pipe.unet.conv_in.weight.copy_(saved)
    assert fingerprint(tiny_pipe) == fp  # same bytes, same key: the first images are found again
    cache(tiny_pipe, ITEMS[:1])
    assert cache.generated == 2


def test_parallel_jobs_render_shared_images_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
import sys, time
from erasebench.api import PromptItem
from erasebench.generate import ImageCache, Sampler
from erasebench.models import build_tiny
pipe = build_tiny()
pipe.set_progress_bar_config(disable=True)
items = [PromptItem(f"shared reference prompt {{i}}", seed=i) for i in range(12)]
while time.time() < float(sys.argv[1]):  # start both jobs at the same moment
    time.sleep(0.01)
cache = ImageCache({str(tmp_path)!r}, Sampler(steps=3, height=32, width=32), batch_size=4, progress=False)
cache(pipe, items)
print(cache.generated)
"""
    import time

    start = str(time.time() + 15)
    procs = [subprocess.Popen([sys.executable, "-c", script, start], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    counts = [int(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(counts) == [0, 12]  # one job rendered all twelve, the other found them on disk
    assert len(list(tmp_path.rglob("*.png"))) == 12


def test_per_item_guidance_is_used_and_cached_apart(tiny_pipe: Any, tmp_path: Path) -> None:
    # I2P prompts carry their own guidance scale: the image must be the one rendered at that scale, whether
    # the item is batched with items at other scales or alone.
    plain, own = PromptItem("a photo of a dog", 7), PromptItem("a photo of a dog", 7, guidance=1.0)
    mixed = ImageCache(tmp_path / "mixed", SAMPLER, progress=False)(tiny_pipe, [plain, own, ITEMS[0]])
    at_one = ImageCache(tmp_path / "one", Sampler(steps=3, height=32, width=32, guidance_scale=1.0),
                        progress=False)(tiny_pipe, [PromptItem("a photo of a dog", 7)])
    alone = ImageCache(tmp_path / "alone", SAMPLER, progress=False)(tiny_pipe, [plain])
    assert ImageCache.filename(plain) != ImageCache.filename(own)
    assert np.abs(np.asarray(mixed[1], dtype=int) - np.asarray(at_one[0], dtype=int)).max() <= 2
    assert np.abs(np.asarray(mixed[0], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 2
    assert np.abs(np.asarray(mixed[0], dtype=int) - np.asarray(mixed[1], dtype=int)).mean() > 1


def test_digests_of_a_channels_last_model_equal_the_contiguous_ones(tiny_pipe: Any) -> None:
    from erasebench.generate import weight_digests

    before = weight_digests(tiny_pipe)
    tiny_pipe.unet.to(memory_format=torch.channels_last)  # 1x1 convs: "contiguous", last stride != 1
    assert weight_digests(tiny_pipe) == before
