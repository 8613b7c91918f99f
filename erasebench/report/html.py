"""One self-contained ``index.html`` that shows every table and image of a report.

The page embeds every PNG as a base64 data URI and carries its CSS inline, so it can be mailed or attached
to a paper review as a single file; nothing in it points at another file. Tables wrap their headers and
images scale to the window, so the page reads on a 1366-pixel laptop screen without scrolling sideways.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from erasebench.results import atomic_write_text


@dataclass(frozen=True)
class Html:
    """An HTML fragment made by erasebench (already escaped), inserted into the page as is."""

    markup: str


#: What a page section shows: a frame (as a table), a PNG (embedded), trusted HTML, or text (preformatted).
Part = pd.DataFrame | Path | Html | str
Section = tuple[str, Sequence[Part]]


def table_html(text: pd.DataFrame, bold: pd.DataFrame | None = None) -> Html:
    """A frame as an HTML table, escaped, with the cells marked in ``bold`` (same shape) in bold."""
    cells = text.map(lambda v: html.escape(str(v)))
    if bold is not None:
        cells = cells.where(~bold.astype(bool), "<b>" + cells + "</b>")
    cells.index = cells.index.map(lambda i: html.escape(" / ".join(map(str, i)) if isinstance(i, tuple) else str(i)))
    cells.columns = cells.columns.map(lambda c: html.escape(str(c)))
    return Html(cells.to_html(escape=False, border=0))


def _embed(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    name = html.escape(png.name)
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def _render(part: Part) -> str:
    if isinstance(part, Html):
        return part.markup
    if isinstance(part, Path):
        return _embed(part)
    if isinstance(part, pd.DataFrame):
        return table_html(part).markup
    return f"<pre>{html.escape(part)}</pre>"


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.6em 0;max-width:100%}
th,td{padding:2px 6px;border-bottom:1px solid #ddd}
thead th{background:#f4f4f4;text-align:center;white-space:normal;max-width:8em;vertical-align:bottom}
tbody th{text-align:left;white-space:nowrap;font-weight:normal}td{text-align:right;white-space:nowrap}
pre{background:#f7f7f7;padding:1em;white-space:pre-wrap;word-break:break-all;font-size:11px}
img{max-width:100%;height:auto}figure{display:inline-block;margin:0.5em;max-width:100%}
figcaption{font-size:11px;color:#666}section{overflow-x:auto}p.note{font-size:12px;color:#444;max-width:60em}
h3{font-size:14px;margin:1em 0 0.2em}"""


def html_page(out_dir: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write ``out_dir/index.html``: the sections, then every image grid in ``out_dir/grids/*.png``.

    Args:
        out_dir: The report directory.
        title: Page title.
        sections: ``(heading, parts)`` pairs, shown in order (see :data:`Part`).

    Returns:
        The page's path.
    """
    grids = sorted((out_dir / "grids").glob("*.png"))
    every = [*sections, *([("Image grids", grids)] if grids else [])]
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<section><h2>{html.escape(heading)}</h2>\n" + "\n".join(map(_render, parts)) + "</section>"
             for heading, parts in every]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
