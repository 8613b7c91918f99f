"""Report figures: the AdvAnchor paper's Figure 8 NudeNet bars, and an erase/preserve trade-off scatter.

Method labels are placed by adjustText so that they do not overlap each other or the markers; every figure
uses the report's one method order and the plugins' display names; PNGs carry no version stamp, so the same
numbers give the same file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless compute nodes
import matplotlib.pyplot as plt
import pandas as pd
from adjustText import adjust_text

from erasebench.report.plugins import evaluator_name, method_name
from erasebench.report.summary import asr_rows, attacks, method_order, paper_blocks, pick, wide

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: PNG metadata: no matplotlib version stamp, so the same numbers give the same file.
PNG_META = {"Software": None}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, metadata=PNG_META)
    plt.close(fig)
    return path


def nudenet_bars(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Grouped bars as the paper's Figure 8: x are NudeNet classes, one bar per method (legend gives totals).

    Args:
        table: :func:`erasebench.report.paper.nudenet_table`'s frame (rows methods, columns classes then ``Total``).
        path: The PNG to write.
        title: Figure title (split, task).

    Returns:
        ``path``.
    """
    classes = [c for c in table.columns if c != "Total"]  # the total would dwarf the classes; it is in the legend
    width = 0.8 / max(1, len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(classes)), 3.8))
    for i, (method, row) in enumerate(table.iterrows()):
        xs = [c + (i - (len(table) - 1) / 2) * width for c in range(len(classes))]
        total = row.get("Total", row[classes].sum())
        ax.bar(xs, row[classes].fillna(0).to_numpy(), width, label=f"{method_name(str(method))} ({total:g})")
    ax.set_xticks(range(len(classes)), [c.replace(" (", "\n(") for c in classes], fontsize=7)
    ax.set_ylabel("detections (mean over seeds)")
    top = float(table[classes].fillna(0).to_numpy().max()) if classes else 0.0
    # All zero: matplotlib would centre a -0.04..0.04 axis on nothing; counts start at 0.
    ax.set_ylim(0, top * 1.1 if top > 0 else 1)
    if top == 0:
        ax.text(0.5, 0.5, "no detections by any method", transform=ax.transAxes, ha="center", fontsize=9, color="0.4")
    ax.legend(fontsize=7, title="method (total)", title_fontsize=7, ncols=2 if len(table) > 6 else 1)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _panel(ax: plt.Axes, points: list[tuple[str, str, float, float]], xlabel: str) -> None:
    """One scatter panel: a marker and colour per group (task), each method labelled without overlaps."""
    texts, xs, ys = [], [], []
    for i, group in enumerate(dict.fromkeys(p[0] for p in points)):
        mine = [p for p in points if p[0] == group]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                   label=group, zorder=3)
        at: dict[tuple[float, float], list[str]] = {}  # methods on the same spot share one label
        for _, method, x, y in mine:
            at.setdefault((round(x, 1), round(y, 1)), []).append(method_name(method))
        for (x, y), names in at.items():
            texts.append(ax.text(x, y, ", ".join(names), fontsize=7, color=f"C{i}"))
            xs.append(x)
            ys.append(y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("preserve ACC (%) ↑")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    pad_x, pad_y = max(5.0, (hi_x - lo_x) * 0.12), max(3.0, (hi_y - lo_y) * 0.15)
    ax.set_xlim(lo_x - pad_x, hi_x + pad_x)
    ax.set_ylim(lo_y - pad_y, hi_y + pad_y)
    adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5},
                expand=(1.2, 1.4), iter_lim=500)


def tradeoff_scatter(summary: pd.DataFrame, path: Path, order: tuple[str, ...] = ()) -> Path | None:
    """Erase ACC (x, lower better) against preserve ACC (y, higher better), one point per (task, method).

    Each point is the mean over the task's concepts. Tasks without both axes are left out. Where attack results
    exist, a second panel puts the attack success rate on x against the same preserve ACC.

    Returns:
        ``path``, or ``None`` (nothing written) when no task has both metrics.
    """
    points, attacked = [], []
    blocks = paper_blocks(summary)
    several_models = len({m for m, _ in blocks}) > 1
    for model, task in blocks:
        x, y = wide(pick(summary, "ACC", "erase", model, task)), wide(pick(summary, "ACC", "preserve", model, task))
        if x.empty or y.empty:
            continue
        both = pd.DataFrame({"x": x.mean() * 100, "y": y.mean() * 100}).dropna()
        both = both.reindex([m for m in method_order(both.index, order)])
        label = f"{model}/{task}" if several_models else task
        points += [(label, str(method), r.x, r.y) for method, r in both.iterrows()]
        names = attacks(summary, model, task)
        for name in names:
            asr = wide(asr_rows(summary, model, task, name))
            common = asr.index.intersection(y.index)  # an attack often runs on fewer concepts
            pair = pd.DataFrame({"x": asr.loc[common].mean() * 100, "y": y.loc[common].mean() * 100}).dropna()
            group = f"{label} ({evaluator_name(name)})" if len(names) > 1 else label
            attacked += [(group, str(method), r.x, r.y) for method, r in pair.iterrows()]
    if not points:
        return None
    if attacked:
        fig, (ax, ax_asr) = plt.subplots(1, 2, figsize=(12.0, 5.0))
        _panel(ax_asr, attacked, "attack success rate (%) ↓ (mean over concepts)")
    else:
        fig, ax = plt.subplots(figsize=(7.0, 5.0))
    _panel(ax, points, "erase ACC (%) ↓ (mean over concepts)")
    fig.suptitle("Erase vs preserve ACC: upper left is better", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
