"""SD v1's CLIP tokenizer built from open_clip's BPE file, checked against open_clip's own tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import REPO, compose_cfg

from erasebench import clip_tokenizer, models
from erasebench.clip_tokenizer import sd_clip_tokenizer
from erasebench.configs import build_task
from erasebench.errors import MissingFileError

SOT, EOT = 49406, 49407


def _shipped_prompts() -> list[str]:
    """Every prompt of every shipped CSV and of every task's splits (all concepts), once each."""
    prompts = {str(p) for f in sorted((REPO / "erasebench/data").rglob("*.csv"))
               for p in pd.read_csv(f)["prompt"]}
    assert len(prompts) > 14000  # I2P (4,703), COCO (10k), Imagenette, the attack sets, duplicates once
    for path in sorted((REPO / "conf/task").glob("*.yaml")):
        cfg = compose_cfg([f"task={path.stem}"])["task"]
        for concept in cfg["concepts"]:
            prompts |= {item.prompt for split in build_task(cfg, concept).splits.values() for item in split}
    return sorted(prompts)


def test_sd_ids_of_known_prompts() -> None:
    tok = sd_clip_tokenizer()
    assert len(tok) == 49408 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (SOT, EOT, EOT)
    assert tok("a painting in the style of Van Gogh").input_ids == [SOT, 320, 3086, 530, 518, 1844, 539, 2451,
                                                                     19697, EOT]
    assert tok("nudity").input_ids == [SOT, 1156, 16436, EOT]


def test_every_shipped_prompt_tokenizes_as_open_clip_does() -> None:
    from open_clip.tokenizer import SimpleTokenizer, basic_clean, whitespace_clean

    prompts = _shipped_prompts()
    # open_clip cleans the text (ftfy, HTML entities) before its BPE; transformers' CLIPTokenizer does not
    # (module docstring). Cleaning first compares the two vocabularies and merge rules, not the cleaning.
    ours = sd_clip_tokenizer()([whitespace_clean(basic_clean(p)) for p in prompts], padding="max_length",
                               max_length=77, truncation=True).input_ids
    ref = SimpleTokenizer()(prompts, context_length=77).tolist()
    ref = [[EOT if i and v == 0 else v for i, v in enumerate(row)] for row in ref]  # open_clip pads with 0
    mismatched = [p for p, a, b in zip(prompts, ours, ref) if a != b]
    assert not mismatched, f"{len(mismatched)} prompts differ, e.g. {mismatched[:3]}"
    truncated = sum(row[-1] == EOT and row[-2] != EOT for row in ours)
    assert truncated > 100  # long I2P prompts: the 77-token truncation is compared too


def test_files_are_cached_and_rebuilt_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    clip_tokenizer._files.cache_clear()
    try:
        tok = sd_clip_tokenizer()
        [built] = (tmp_path / "erasebench/tokenizers").iterdir()
        vocab = built / "vocab.json"
        assert vocab.is_file() and (built / "merges.txt").read_text().startswith("#version: 0.2\n")
        stamp = vocab.stat().st_mtime_ns
        clip_tokenizer._files.cache_clear()
        assert sd_clip_tokenizer()("nudity").input_ids == tok("nudity").input_ids
        assert vocab.stat().st_mtime_ns == stamp  # read from the cache, not rebuilt
        vocab.unlink()
        clip_tokenizer._files.cache_clear()
        assert sd_clip_tokenizer()("nudity").input_ids == [SOT, 1156, 16436, EOT] and vocab.is_file()
        assert not list(built.glob(".tmp-*"))
    finally:
        clip_tokenizer._files.cache_clear()


def test_missing_open_clip_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(MissingFileError, match="pip install \"open-clip-torch"):
        clip_tokenizer.bpe_vocab_file()


def test_sd14_random_uses_the_real_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def assemble(unet: dict, vae: dict, text: dict, tokenizer: Any, device: Any) -> None:
        seen.update(tokenizer=tokenizer, text=text)  # building the 1.1B-parameter model is not the point here

    monkeypatch.setattr(models, "_assemble", assemble)
    models.build_sd14_random()
    assert seen["tokenizer"]("nudity").input_ids == [SOT, 1156, 16436, EOT]
    assert seen["text"]["vocab_size"] == len(seen["tokenizer"]) == 49408
