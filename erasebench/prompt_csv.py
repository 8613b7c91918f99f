"""Read prompt CSVs (task splits, attack prompts, retain and preserve captions), refusing bad files clearly.

A prompt CSV is UTF-8 text: a header line naming the columns, one of them ``prompt``, then one row per prompt.
Files made by hand or by Excel break this in many ways (Latin-1 or UTF-16 text, a spreadsheet or an image
named by mistake, an unquoted comma, an unclosed double quote, a seed cell reading ``abc``); read with
:class:`csv.DictReader` they give a traceback from deep inside a run, or worse, silently wrong prompts (a
ragged row's cells shifted into the wrong columns, an unclosed quote swallowing the rest of the file). Here
each of them raises :class:`~erasebench.errors.ConfigError` with one paragraph naming the file, the line and a
fix, which the command line prints before exiting with status 2.

- :func:`read_prompt_csv`: the data rows of a prompt CSV, each remembering the line it starts on.
- :func:`read_csv_records`: the non-blank records of any CSV (a Ring-A-Bell pairs file, whose columns go by
  position), with the same text and quoting checks.
- :func:`seed_cell`, :func:`guidance_cell`: a row's seed or guidance-scale cell as a number, or an error
  naming the cell.

This module imports nothing from the rest of erasebench but its errors, so that :mod:`erasebench.configs`
and the plugins can all use it.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

from erasebench.errors import ConfigError


class _CsvRow(dict):  # type: ignore[type-arg]  # a dict[str, str]
    """A data row of a prompt CSV (column -> cell) that remembers the 1-based file line it starts on.

    The line lets a bad cell found later (a seed that is not a number) be reported where the user can find it.
    """

    __slots__ = ("line",)
    line: int


def _show(value: str, limit: int = 60) -> str:
    """A cell quoted for a one-line message: ``repr`` escapes line breaks, and a long cell is cut."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _decode(path: Path, what: str) -> str:
    """The text of a CSV, checked to be UTF-8 text (``what``: ``Prompt file``, ``Pairs file``, for messages).

    Raises:
        ConfigError: The file cannot be read, is binary or UTF-16, or is not valid UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:  # e.g. a directory or an unreadable file named as prompt_file
        raise ConfigError(f"{what} '{path}' cannot be read ({exc.strerror or exc}); "
                          "give a readable CSV file.") from exc
    # UTF-16 (Excel's "Unicode text") is full of NUL bytes: name it before the binary check below.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{what} '{path}' is UTF-16 text; re-save it as UTF-8 (e.g. Excel's 'CSV UTF-8').")
    # Text never has NUL bytes and images, .xlsx and other binaries almost always do; the csv module would read
    # them as (garbage) text.
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{what} '{path}' is not a text CSV: it has a NUL byte at byte offset {nul}, so it "
                          "is binary (an image, a spreadsheet?). Give a UTF-8 CSV file whose first line is a header "
                          "naming the columns.")
    # Excel's "CSV UTF-8" starts with a byte-order mark, which would otherwise stick to the first column's name.
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = data.count(b"\n", 0, at) + 1
        raise ConfigError(
            f"{what} '{path}' is not UTF-8: line {line} has the byte "
            f"0x{data[at]:02x} (byte offset {at}), which is not valid UTF-8 (files saved as Latin-1 or "
            "Windows-1252, e.g. by Excel, look like this). Re-save it as UTF-8 (Excel: 'CSV UTF-8'; or "
            "iconv -f cp1252 -t utf-8)."
        ) from exc


def _csv_error_message(path: Path, line: int, exc: csv.Error, what: str) -> str:
    """One paragraph for a record the csv module cannot parse, starting on ``line`` of ``path``."""
    msg = str(exc)
    if msg.startswith("field larger than field limit"):
        # Prompts are short: a huge field is nearly always an unclosed quote that ran on through later rows.
        detail = (f"a field is longer than {csv.field_size_limit():,} characters, the csv module's limit; prompts "
                  "are far shorter, so either a double quote on this line opens a field that is never closed or "
                  "this is not a prompt file")
    elif msg == "unexpected end of data":
        detail = "a double quote on this line opens a field that is never closed (it would run to the end of the file)"
    elif "expected after" in msg:
        detail = "a double quote in this row ends a quoted field but more text follows it before the next comma"
    else:
        detail = f"the row is not valid CSV ({msg})"
    return (f"{what} '{path}', line {line}: {detail}. A field that contains a comma, a double quote or a line "
            'break must be quoted whole, with each double quote inside it doubled, e.g. "a ""cat"", at night".')


def read_csv_records(path: Path, what: str = "Prompt file") -> list[tuple[int, list[str]]]:
    """The non-blank records of a UTF-8 CSV (the header first), each with the 1-based line it starts on.

    Args:
        path: The resolved file.
        what: What the file is, for messages (``"Pairs file"``).

    Raises:
        ConfigError: The file is not UTF-8 text or has a record the csv module cannot parse (a stray or
            unclosed double quote); the message names the line.
    """
    text = _decode(path, what)
    # strict: a stray or unclosed double quote is an error instead of being merged silently into one long field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    end = 0  # the last line read so far: the next record starts on the line after it
    while True:
        start = end + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise ConfigError(_csv_error_message(path, start, exc, what)) from exc
        if cells is None:
            return records
        end = reader.line_num
        if cells:  # not a blank line (a trailing newline at the end of the file, say)
            records.append((start, cells))


def _ragged_message(path: Path, line: int, fields: int, header: list[str]) -> str:
    """One paragraph for a data row whose number of fields differs from the header's."""
    if fields > len(header):
        fix = 'quote a prompt that contains a comma, e.g. "a cat, at night"'
    else:
        fix = "give every column a value, possibly empty (a,,b)"
    return (f"Prompt file '{path}', line {line}: the row has {fields} field{'' if fields == 1 else 's'} but the "
            f"header has {len(header)} columns ({', '.join(header)}); {fix}.")


def read_prompt_csv(path: Path) -> list[dict[str, str]]:
    """Read a prompt CSV: a UTF-8 header line naming the columns (one of them ``prompt``), then one row per prompt.

    Blank lines are skipped. Each row is a ``column -> cell`` dict whose ``line`` attribute is the 1-based file
    line it starts on (a quoted cell may span lines).

    Args:
        path: The resolved file.

    Returns:
        The data rows, in file order.

    Raises:
        ConfigError: The file is not UTF-8 text, is empty, has no ``prompt`` column or no rows, or has a row the
            csv module cannot parse or whose field count differs from the header's; the message names the line.
    """
    records = read_csv_records(path)
    if not records:
        raise ConfigError(f"Prompt file '{path}' is empty; it needs a header line naming the columns (one of them "
                          "'prompt'), then one row per prompt.")
    (start, header), data = records[0], records[1:]
    if "prompt" not in header:
        raise ConfigError(f"Prompt file '{path}' has no 'prompt' column (line {start}, the header, has "
                          f"columns: {', '.join(header)}); its first line must name the columns, one of them "
                          "'prompt'.")
    rows: list[dict[str, str]] = []
    for line, cells in data:
        if len(cells) != len(header):
            raise ConfigError(_ragged_message(path, line, len(cells), header))
        row = _CsvRow(zip(header, cells))
        row.line = line
        rows.append(row)
    if not rows:
        raise ConfigError(f"Prompt file '{path}' has a header line but no rows; add one row per prompt under it.")
    return rows


def _cell_at(path: Path, row: Mapping[str, str], column: str) -> str:
    """Where a cell is, for a message: the file, the row's line (when known) and the column."""
    line = getattr(row, "line", None)
    return f"Prompt file '{path}', {f'line {line}' if line else 'a row'}: column '{column}'"


def seed_cell(path: Path, row: Mapping[str, str], column: str, *, allow_float: bool = False) -> int:
    """A row's seed cell as an integer.

    Args:
        path: The file, for messages.
        row: A row of :func:`read_prompt_csv`.
        column: The seed column.
        allow_float: Also take a number written as a float, cut to an integer like ``int(float(cell))``
            (``3.0``: pandas writes an integer column with gaps so; the UnlearnDiffAtk CSVs were read this way).

    Raises:
        ConfigError: The cell is not an integer (with ``allow_float``: not a finite number).
    """
    cell = row[column]
    try:
        return int(float(cell)) if allow_float else int(cell)
    except (ValueError, OverflowError):  # int(float("inf")) overflows, int(float("nan")) is a ValueError
        what = "a finite number" if allow_float else "an integer"
        raise ConfigError(f"{_cell_at(path, row, column)} has {_show(cell)}; it must be {what} "
                          "(the image seed).") from None


def guidance_cell(path: Path, row: Mapping[str, str], column: str) -> float:
    """A row's guidance-scale cell as a finite number.

    Raises:
        ConfigError: The cell is not a number, or is nan or infinite (which would give blank images, silently).
    """
    try:
        value = float(row[column])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{_cell_at(path, row, column)} has {_show(row[column])}; it must be a finite number "
                          "(the guidance scale, e.g. 7.5).")
    return value
