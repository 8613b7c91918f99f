"""Build a tiny CLIP BPE tokenizer (vocab.json + merges.txt) from the toy vocabulary.

The files follow the exact format of OpenAI CLIP's tokenizer, so
``transformers.CLIPTokenizer.from_pretrained(dir)`` loads them and behaves like
SD v1.4's tokenizer (BOS/EOS, ``pad_token = <|endoftext|>``, ``model_max_length``
77). The base vocabulary holds every byte-level character (with and without the
``</w>`` end-of-word marker), so any text tokenizes without unknown tokens; every
caption word additionally becomes a single token through a chain of merges.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # same as SD v1.x so prompts are padded/truncated identically


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte-to-printable-unicode table (copied: it is not public API)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply CLIP's BPE algorithm (same tie-breaking) to one lower-case word."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_tokenizer_files(words: list[str], out_dir: str | Path) -> CLIPTokenizer:
    """Write ``vocab.json``, ``merges.txt`` and configs, then load the tokenizer.

    Merges are added greedily: for each word, run BPE with the merges so far and
    append a merge of the first two remaining pieces until one token is left.
    New merges have the lowest priority, so they never change the tokenization of
    words handled earlier (those always have an older merge available).

    Args:
        words: Lower-case ASCII words that must each be a single token.
        out_dir: Directory to write the tokenizer into.

    Returns:
        The loaded ``CLIPTokenizer``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab_list: list[str] = base + [c + "</w>" for c in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in sorted(set(words)):
        parts = _bpe(w, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            parts = _bpe(w, ranks)
    vocab_list += [BOS, EOS]
    seen: dict[str, int] = {}
    for tok in vocab_list:
        seen.setdefault(tok, len(seen))
    (out / "vocab.json").write_text(json.dumps(seen, ensure_ascii=False))
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    # transformers>=5 builds CLIPTokenizer from in-memory vocab/merges; saving it
    # also writes tokenizer.json. vocab.json/merges.txt stay for older versions.
    tok = CLIPTokenizer(
        vocab=seen, merges=list(merges),
        bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tok.save_pretrained(str(out))
    return CLIPTokenizer.from_pretrained(str(out))
