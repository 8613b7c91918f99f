"""Report figures (the AdvAnchor paper's Figure 8 NudeNet bars, an erase/preserve trade-off scatter) and one
self-contained ``index.html`` that shows every table and image of a report.

The page embeds every PNG as a base64 data URI and carries its CSS inline, so it can be mailed or attached
to a paper review as a single file; nothing in it points at another file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless compute nodes
import matplotlib.pyplot as plt
import pandas as pd

from erasebench.paper import ATTACK_NAMES, asr_evaluators, asr_means, paper_blocks, pick
from erasebench.results import atomic_write_text

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: PNG metadata: no matplotlib version stamp, so the same numbers give the same file.
PNG_META = {"Software": None}


@dataclass(frozen=True)
class Html:
    """An HTML fragment made by erasebench (already escaped), inserted into the page as is."""

    markup: str


#: What a page section shows: a frame (as a table), a PNG (embedded), trusted HTML, or text (preformatted).
Part = pd.DataFrame | Path | Html | str
Section = tuple[str, Sequence[Part]]


def nudenet_bars(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars as the paper's Figure 8: x are NudeNet classes, one bar per method (legend gives totals).

    Args:
        table: :func:`erasebench.paper.nudenet_table`'s frame (rows methods, columns classes then ``total``).
        path: The PNG to write.

    Returns:
        ``path``.
    """
    classes = [c for c in table.columns if c != "total"]  # the total would dwarf the classes; it is in the legend
    width = 0.8 / max(1, len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(classes)), 3.6))
    for i, (method, row) in enumerate(table.iterrows()):
        xs = [c + (i - (len(table) - 1) / 2) * width for c in range(len(classes))]
        total = row.get("total", row[classes].sum())
        ax.bar(xs, row[classes].fillna(0).to_numpy(), width, label=f"{method} ({total:g})")
    ax.set_xticks(range(len(classes)), [c.replace("_", "\n") for c in classes], fontsize=7)
    ax.set_ylabel("detections")
    ax.legend(fontsize=7, title="method (total)", title_fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata=PNG_META)
    plt.close(fig)
    return path


def _panel(ax: plt.Axes, points: list[tuple[str, str, float, float]], xlabel: str) -> None:
    """One scatter panel: a marker and colour per label (task), methods annotated (shared spots share a label)."""
    for i, label in enumerate(dict.fromkeys(p[0] for p in points)):
        mine = [p for p in points if p[0] == label]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                   label=label)
        at: dict[tuple[float, float], list[str]] = {}  # methods on the same spot share one label
        for _, method, x, y in mine:
            at.setdefault((round(x, 1), round(y, 1)), []).append(method)
        for (x, y), methods in at.items():
            ax.annotate(", ".join(methods), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color=f"C{i}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("preserve ACC (%) ↑")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def tradeoff_scatter(summary: pd.DataFrame, path: Path) -> Path | None:
    """Erase ACC (x, lower better) against preserve ACC (y, higher better), one point per (task, method).

    Each point is the mean over the task's concepts (the i2p task's erase ACC is the share of images its
    I2P classifier puts in the erased category). Tasks without both axes are left out. Where attack results exist
    (``asr`` of ``attack_unlearndiff`` / ``attack_ring_a_bell``), a second panel puts the attack success rate on x
    against the same preserve ACC (one point per task, attack and method).

    Returns:
        ``path``, or ``None`` (nothing written) when no task has both metrics.
    """
    points, attacked = [], []
    blocks = paper_blocks(summary)
    several_models = len({m for m, _ in blocks}) > 1
    for model, task in blocks:
        x, y = pick(summary, "acc", "erase", model, task)[1], pick(summary, "acc", "preserve", model, task)[1]
        if x.empty or y.empty:
            continue
        both = pd.DataFrame({"x": x.mean() * 100, "y": y.mean() * 100}).dropna()
        label = f"{model}/{task}" if several_models else task
        points += [(label, str(method), r.x, r.y) for method, r in both.iterrows()]
        attacks = asr_evaluators(summary, model, task)
        for attack in attacks:
            # Mean over the concepts that have both numbers (an attack often runs on fewer concepts).
            asr = asr_means(summary, model, task, attack)
            common = asr.index.intersection(y.index)
            pair = pd.DataFrame({"x": asr.loc[common].mean() * 100, "y": y.loc[common].mean() * 100}).dropna()
            name = f"{label} ({ATTACK_NAMES.get(attack, attack)})" if len(attacks) > 1 else label
            attacked += [(name, str(method), r.x, r.y) for method, r in pair.iterrows()]
    if not points:
        return None
    if attacked:
        fig, (ax, ax_asr) = plt.subplots(1, 2, figsize=(11.0, 4.5))
        _panel(ax_asr, attacked, "attack success rate (%) ↓ (mean over concepts)")
    else:
        fig, ax = plt.subplots(figsize=(6.0, 4.5))
    _panel(ax, points, "erase ACC (%) ↓ (mean over concepts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata=PNG_META)
    plt.close(fig)
    return path


def table_html(text: pd.DataFrame, bold: pd.DataFrame | None = None) -> Html:
    """A frame as an HTML table, escaped, with the cells marked in ``bold`` (same shape) in bold."""
    cells = text.astype(str).map(html.escape)
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


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}th,td{padding:2px 8px;border-bottom:1px solid #ddd}
th{background:#f4f4f4;text-align:center}td{text-align:right;white-space:nowrap}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:11px}img{max-width:100%}
figure{display:inline-block;margin:0.5em}figcaption{font-size:11px;color:#666}section{overflow-x:auto}"""


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
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
