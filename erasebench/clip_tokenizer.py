"""Stable Diffusion v1's CLIP tokenizer, built offline from the BPE vocabulary open-clip-torch ships.

SD v1.x tokenizes with CLIP ViT-L/14's byte-pair encoding: 49,408 tokens, ``<|startoftext|>`` = 49406,
``<|endoftext|>`` = 49407 (also the padding token), 77 positions. The Hugging Face files
(``tokenizer/vocab.json`` and ``merges.txt`` of every SD v1 checkpoint) are derived from OpenAI's
``bpe_simple_vocab_16e6.txt.gz``, which the ``open-clip-torch`` wheel carries. This module rebuilds them the
way CLIP's ``SimpleTokenizer`` does:

    vocab = the 256 byte symbols (GPT-2's byte-to-unicode map, in its order)
          + the same 256 with ``</w>`` (end of word)
          + the first 48,894 merges of the file (lines 2 .. 48,895), each pair joined
          + ``<|startoftext|>``, ``<|endoftext|>``

and caches them in ``$XDG_CACHE_HOME/erasebench/tokenizers/`` (``~/.cache`` by default), so a random SD
model's prompts get exactly the ids the real checkpoint gives them ("nudity" -> 49406, 1156, 16436, 49407).

The BPE is the same; the text cleaning before it is not, and the tokenizer returned is the one SD pipelines
load (transformers' ``CLIPTokenizer``), so a random model's ids equal a pretrained one's in the same
environment. open_clip's ``SimpleTokenizer`` first runs ``ftfy.fix_text`` and HTML-unescapes (curly quotes
become straight ones, ``&amp;`` becomes ``&``); transformers 5's ``CLIPTokenizer`` only applies NFC, collapses
whitespace and lowercases (transformers 4's slow tokenizer ran ftfy when it was installed). Of the 20,338
prompt rows of the shipped CSVs, 103 tokenize differently for that reason (mostly ``“``); after the same
cleaning, all of them agree (tests/test_clip_tokenizer.py).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from erasebench.errors import MissingFileError

VOCAB_SIZE = 49408
_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894: the vocabulary is bytes, bytes</w>, merges, two specials
_INSTALL = 'pip install "open-clip-torch>=2.20" (it ships CLIP\'s BPE file, bpe_simple_vocab_16e6.txt.gz)'


def bpe_vocab_file() -> Path:
    """The path of open_clip's ``bpe_simple_vocab_16e6.txt.gz``.

    Raises:
        MissingFileError: open-clip-torch is not installed (the message says how to install it).
    """
    try:
        import open_clip
    except ImportError:
        raise MissingFileError(f"SD's CLIP tokenizer is built from open-clip-torch's BPE vocabulary, and "
                               f"open-clip-torch is not installed. Install it: {_INSTALL}.") from None
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingFileError(f"open-clip-torch is installed but {path} is missing; reinstall it: {_INSTALL}.")
    return path


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's 256 byte symbols, in vocabulary order: printable bytes as themselves, the rest 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def build_files(bpe_gz: Path, out_dir: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face's CLIP format) for ``bpe_gz`` into ``out_dir``."""
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + _MERGES]]  # line 1 is a version header
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges),
              "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise MissingFileError(f"{bpe_gz} gives {len(vocab)} distinct tokens, not CLIP's {VOCAB_SIZE}: the file "
                               f"is not CLIP's BPE vocabulary. Reinstall open-clip-torch: {_INSTALL}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    for name in ("vocab.json", "merges.txt"):  # renames are atomic: a reader never sees half a file
        os.replace(tmp / name, out_dir / name)
    tmp.rmdir()
    return out_dir


def cache_dir() -> Path:
    """Where the built files live: ``$XDG_CACHE_HOME/erasebench/tokenizers`` (``~/.cache`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "erasebench" / "tokenizers"


@functools.cache
def _files() -> Path:
    bpe_gz = bpe_vocab_file()
    digest = hashlib.sha256(bpe_gz.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"clip-bpe-{digest}"
    if not ((out / "vocab.json").is_file() and (out / "merges.txt").is_file()):
        build_files(bpe_gz, out)
    return out


def sd_clip_tokenizer(max_length: int = 77) -> Any:
    """SD v1's ``CLIPTokenizer`` (the real BPE vocabulary; pads with ``<|endoftext|>``), built offline.

    Raises:
        MissingFileError: open-clip-torch (which ships the vocabulary) is not installed.
    """
    from transformers import CLIPTokenizer

    files = _files()
    tok = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=max_length,
                        pad_token="<|endoftext|>")
    return tok
