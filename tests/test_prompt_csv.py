"""Bad prompt CSVs stop the run with one paragraph naming the file, the line and what is valid.

Line numbers in the messages are 1-based physical lines of the file (the header is line 1).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from erasebench.evaluators._attack import attack_items

from erasebench.configs import build_task
from erasebench.errors import ConfigError, ErasebenchError
from erasebench.prompt_csv import read_prompt_csv

#: The first bytes of a PNG file: signature and IHDR chunk (NUL bytes in the chunk length).
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"


def _task(path: Path, **split: Any) -> dict[str, Any]:
    """A two-concept task whose erase split is the rows of ``path`` (plus ``split`` settings)."""
    return {"name": "t", "concepts": {"cat": "cat", "dog": "dog"},
            "splits": {"erase": {"prompt_file": str(path), **split}, "preserve": {"templates": ["a {concept}"]}}}


def _error(path: Path, **split: Any) -> str:
    """The message of the error that building the task raises; it must be one user-facing paragraph."""
    with pytest.raises(ConfigError) as info:
        build_task(_task(path, **split), "cat")
    assert isinstance(info.value, ErasebenchError)
    msg = str(info.value)
    assert f"'{path}'" in msg and "\n" not in msg and "\r" not in msg, msg
    return msg


def _write(tmp_path: Path, data: str | bytes, name: str = "prompts.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_latin1_file_says_not_utf8_with_line_and_offset(tmp_path: Path) -> None:
    text = "prompt,evaluation_seed\na dog,1\na café at night,2\n"
    path = _write(tmp_path, text.encode("latin-1"))
    msg = _error(path)
    offset = text.encode("latin-1").index(b"\xe9")
    assert "not UTF-8" in msg and "line 3" in msg and f"byte offset {offset}" in msg and "0xe9" in msg
    assert "Re-save it as UTF-8" in msg


@pytest.mark.parametrize(("data", "expect"), [
    (PNG, "not a text CSV"),
    (b"prompt\n" + random.Random(0).randbytes(200) + b"\x00" + random.Random(1).randbytes(50), "not a text CSV"),
    ("prompt\na cat\n".encode("utf-16"), "UTF-16"),
], ids=["png", "random-bytes", "utf16"])
def test_binary_file_says_not_a_text_csv(tmp_path: Path, data: bytes, expect: str) -> None:
    msg = _error(_write(tmp_path, data))
    assert expect in msg and "UTF-8" in msg


def test_field_over_csv_limit_names_line_and_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, "prompt,evaluation_seed\na cat,1\n" + "x" * (csv.field_size_limit() + 1) + ",2\nb,3\n")
    msg = _error(path)
    assert "line 3" in msg and f"{csv.field_size_limit():,} characters" in msg
    assert csv.field_size_limit() == 131072  # the limit is kept


@pytest.mark.parametrize(("text", "split", "expect"), [
    ("prompt,evaluation_seed\na cat,1\na dog,abc\n", {}, ["line 3", "column 'evaluation_seed'", "'abc'", "integer"]),
    ("prompt,evaluation_seed\na cat,1.5\n", {}, ["line 2", "'1.5'", "integer"]),
    ("prompt,s\na cat,1\na dog,x\n", {"seed_column": "s"}, ["line 3", "column 's'", "'x'", "integer"]),
    ("prompt,g\na cat,7.5\na dog,high\n", {"guidance_column": "g"}, ["line 3", "column 'g'", "'high'", "number"]),
    ("prompt,g\na cat,nan\n", {"guidance_column": "g"}, ["line 2", "'nan'", "finite number"]),
    # A line break inside a quoted cell: the message shows it escaped and names the line the row starts on.
    ('prompt,evaluation_seed\na cat,1\n"a\ndog","x\ny"\n', {}, ["line 3", "'x\\ny'", "integer"]),
], ids=["seed-word", "seed-float", "seed-column", "guidance-word", "guidance-nan", "multiline"])
def test_bad_seed_or_guidance_cell(tmp_path: Path, text: str, split: dict[str, str], expect: list[str]) -> None:
    msg = _error(_write(tmp_path, text), **split)
    assert all(e in msg for e in expect), msg


def test_explicit_seed_column_must_exist(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "prompt,evaluation_seed\na cat,1\n"), seed_column="seeds")
    assert "no column 'seeds'" in msg


@pytest.mark.parametrize(("text", "expect"), [
    ("prompt,evaluation_seed\na cat,1\na cat, at night,2\n", ["line 3", "3 fields", "2 columns", "quote"]),
    ("prompt,evaluation_seed\na cat,1\n\na dog\n", ["line 4", "1 field but", "2 columns"]),
    ('prompt,evaluation_seed\na dog,0\n"a cat,1\nb,2\nc,3\n', ["line 3", "never closed"]),
    ('prompt,evaluation_seed\na dog,0\n"a cat,1\nb,2\n"c",3\n', ["line 3", "double quote"]),
    ('prompt,evaluation_seed\n"a" cat,1\n', ["line 2", "double quote"]),
    # An unclosed quote in a big file hits the field limit before the end of the file: still this line.
    ('prompt,evaluation_seed\n"a cat,1\n' + "a dog,2\n" * 20000, ["line 2", "never closed"]),
], ids=["extra-field", "missing-field", "unterminated-quote", "unterminated-then-quote", "stray-quote",
        "unterminated-big-file"])
def test_ragged_or_badly_quoted_row_names_its_line(tmp_path: Path, text: str, expect: list[str]) -> None:
    msg = _error(_write(tmp_path, text))
    assert all(e in msg for e in expect), msg


@pytest.mark.parametrize(("data", "expect"), [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b"prompt,evaluation_seed\n", "no rows"),
    (b"prompt,evaluation_seed\n\n", "no rows"),
    (b"text,evaluation_seed\na cat,1\n", "no 'prompt' column"),
    (b"text,evaluation_seed\n", "no 'prompt' column"),
], ids=["zero-bytes", "blank-lines", "header-only", "header-blank", "no-prompt-column", "no-prompt-header-only"])
def test_empty_header_only_or_no_prompt_column(tmp_path: Path, data: bytes, expect: str) -> None:
    msg = _error(_write(tmp_path, data))
    assert expect in msg, msg


def test_good_file_parses_as_before(tmp_path: Path) -> None:
    """Blank lines, CRLF, a byte-order mark, quoted commas, quotes and line breaks are all fine."""
    text = ('\ufeffprompt,evaluation_seed,g\r\na cat,3,7.5\r\n\r\n"a cat, ""tabby""",,\r\n"two\nlines",4,1\r\n\r\n')
    path = _write(tmp_path, text)
    rows = read_prompt_csv(path)
    assert rows == [{"prompt": "a cat", "evaluation_seed": "3", "g": "7.5"},
                    {"prompt": 'a cat, "tabby"', "evaluation_seed": "", "g": ""},
                    {"prompt": "two\nlines", "evaluation_seed": "4", "g": "1"}]
    assert [r.line for r in rows] == [2, 4, 5]  # type: ignore[attr-defined]
    items = build_task(_task(path, guidance_column="g", seed=9), "cat").splits["erase"]
    assert [(it.prompt, it.seed, it.guidance) for it in items] == [
        ("a cat", 3, 7.5), ('a cat, "tabby"', 9, None), ("two\nlines", 4, 1.0)]


def test_attack_prompt_file_gets_the_same_checks(tmp_path: Path) -> None:
    """attack_items reads its CSV like a split's: a Latin-1 file is a ConfigError naming it, not a traceback."""
    path = _write(tmp_path, "prompt,evaluation_seed\na café,1\n".encode("latin-1"), name="attack.csv")
    task = build_task(_task(_write(tmp_path, "prompt\na cat\n")), "cat")
    with pytest.raises(ConfigError) as info:
        attack_items(task, str(path), data_path=Path)
    msg = str(info.value)
    assert f"'{path}'" in msg and "not UTF-8" in msg and "line 2" in msg and "\n" not in msg, msg
    # Its seeds keep their formats ('3.0', empty: 0) and guidance cells become floats; a garbage seed is named.
    good = _write(tmp_path, "prompt,evaluation_seed,evaluation_guidance\na,3.0,7.5\nb,,\nc,12,\n", name="good.csv")
    assert [(it.seed, it.guidance) for it in attack_items(task, str(good), data_path=Path)] == [
        (3, 7.5), (0, None), (12, None)]
    bad = _write(tmp_path, "prompt,evaluation_seed\na,1\nb,seven\n", name="bad.csv")
    with pytest.raises(ConfigError, match=r"bad\.csv', line 3: column 'evaluation_seed' has 'seven'"):
        attack_items(task, str(bad), data_path=Path)


def test_cli_prints_one_error_paragraph(tmp_path: Path) -> None:
    path = _write(tmp_path, "prompt,evaluation_seed\na cat,1\na cat, at night,2\n", name="bad_prompts.csv")
    proc = run_cli([f"+task.splits.preserve.prompt_file={path}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "erasebench: error:" in proc.stderr and "bad_prompts.csv" in proc.stderr and "line 3" in proc.stderr
    assert "Traceback" not in proc.stderr
