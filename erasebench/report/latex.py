"""LaTeX building blocks shared by the report's tables: escaping, width estimates and the float around a table.

Every table is a ``table`` float with a caption and a label, set in ``\\footnotesize`` (8 pt in a 10 pt
article) and never scaled: a table that would be wider than :data:`TEXT_WIDTH_PT` is laid out differently or
split by its caller (:func:`fits`), so no number prints below 7 pt. Each file starts with one comment line that
names the packages it needs (``% packages: booktabs``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: The narrowest text width the tables must fit: a plain one-column ``article`` at 10 pt (345 pt).
TEXT_WIDTH_PT = 345.0
#: Width of one character at ``\footnotesize`` (bold digits are 0.575 em of 8 pt = 4.6 pt), and the padding
#: of a column (two ``\tabcolsep`` of 6 pt).
CHAR_PT = 4.6
PAD_PT = 12.0
PACKAGES = ("booktabs",)


def escape(text: object) -> str:
    """Escape the LaTeX special characters that occur in names and settings."""
    text = re.sub(r"([_&%#$])", r"\\\1", str(text))
    for plain, tex in (("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), (">=", r"$\geq$"),
                       ("<", r"$<$"), (">", r"$>$")):
        text = text.replace(plain, tex)
    return text


def label(*parts: str) -> str:
    """A ``\\label`` key from names: ``tab:<parts joined by ->`` with only letters, digits and dashes."""
    return "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-")


def visible(cell: str) -> str:
    """A cell's text as printed: without LaTeX commands and braces (for width estimates)."""
    text = re.sub(r"\\(textbf|underline|emph|textit)\{", "", cell)
    text = text.replace(r"$\pm$", "±").replace(r"$\uparrow$", "↑").replace(r"$\downarrow$", "↓")
    return re.sub(r"[{}$\\]", "", text)


def width_pt(columns: Sequence[Sequence[str]]) -> float:
    """Estimated printed width of a tabular: per column its widest cell (a header row may hold several
    columns' text in a ``\\multicolumn``; callers pass what each column must hold)."""
    return sum(max((len(visible(c)) for c in col), default=0) * CHAR_PT + PAD_PT for col in columns)


def fits(columns: Sequence[Sequence[str]], width: float = TEXT_WIDTH_PT) -> bool:
    """Whether a tabular with these columns fits the text width at ``\\footnotesize``."""
    return width_pt(columns) <= width


def table_float(tabular: list[str], caption: str, key: str, note: str = "",
                packages: Sequence[str] = PACKAGES) -> str:
    """A complete ``table`` float: the packages comment, caption, label, the tabular lines and a note.

    Args:
        tabular: Lines from ``\\begin{tabular}`` to ``\\end{tabular}``.
        caption: Caption text (already LaTeX).
        key: The ``\\label`` key.
        note: A ``\\footnotesize`` paragraph under the table (already LaTeX), or empty.
        packages: What the preamble needs, named on the first line.
    """
    lines = [f"% packages: {','.join(packages)}", r"\begin{table}[t]", r"\centering", r"\footnotesize",
             rf"\caption{{{caption}}}", rf"\label{{{key}}}", *tabular]
    if note:
        lines.append(r"\par\smallskip\parbox{\linewidth}{\raggedright " + note + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def split_evenly(items: Sequence[str], parts: int) -> list[list[str]]:
    """``items`` in ``parts`` consecutive chunks of near-equal size (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out
