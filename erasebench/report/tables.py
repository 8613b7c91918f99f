"""The summary table: methods as rows, one column per (evaluator, split, metric), as Markdown, LaTeX and HTML.

A cell reads ``mean ± std`` over seeds when there are two or more, else the run's value and its 95% interval
``value [low, high]`` (or the value alone when its metric has none). Percentages print in percent. **Bold**:
the best method of the cell (the baseline never competes); underlined: not significantly different from the
best (paired test at the level in the note). The same :func:`cells` feed every format.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from erasebench import stats
from erasebench.report import latex
from erasebench.report.plugins import method_name
from erasebench.report.summary import BLOCK, CELL, direction, method_order

ARROWS = {True: " ↑", False: " ↓", None: ""}
INDEX = [*BLOCK, "method"]


def number(value: float, unit: str, decimals: int = 2) -> str:
    """A value as printed: a fraction with unit ``%`` in percent with one decimal, else ``decimals``."""
    if value is None or not math.isfinite(value):
        return "--"
    scaled, places = (value * 100, 1) if unit == "%" else (value, decimals)
    text = f"{scaled:.{places}f}"
    return text.lstrip("-") if float(text) == 0 else text  # the baseline's FID of -0.00 reads as 0.00


def cell_text(row: pd.Series, decimals: int = 2) -> str:
    """``mean ± std`` (two or more seeds), ``value [low, high]`` (one seed with an interval) or ``value``."""
    unit = str(row["unit"])
    if row["seeds"] >= 2:
        return f"{number(row['mean'], unit, decimals)} ± {number(row['std'], unit, decimals)}"
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        return f"{number(row['mean'], unit, decimals)} [{number(row['ci_low'], unit, decimals)}, " \
               f"{number(row['ci_high'], unit, decimals)}]"
    return number(row["mean"], unit, decimals)


def headers(summary: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(evaluator, split, metric) -> column header ``<display> <split> <arrow>``, with the evaluator added when
    two evaluators share a display name."""
    cols = summary.drop_duplicates(["evaluator", "split", "metric"])
    clash = cols.groupby(["metric_display", "split"])["evaluator"].transform("nunique") > 1
    out = {}
    for (_, r), dup in zip(cols.iterrows(), clash, strict=True):
        name = f"{r['metric_display']} ({r['evaluator']})" if dup else str(r["metric_display"])
        unit = " (%)" if r["unit"] == "%" else ""
        out[r["evaluator"], r["split"], r["metric"]] = f"{name}{unit} {r['split']}{ARROWS[direction(r['higher_is_better'])]}"
    return out


def cells(summary: pd.DataFrame, decimals: int = 2,
          order: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Text, best and tied frames: rows (model, task, concept, method), columns the headers, plus ``seeds``."""
    names = headers(summary)
    s = summary.assign(column=[names[k] for k in zip(summary["evaluator"], summary["split"], summary["metric"])])
    s["text"] = [cell_text(r, decimals) for _, r in s.iterrows()]
    text = s.pivot(index=INDEX, columns="column", values="text")
    best = s.pivot(index=INDEX, columns="column", values="best").astype(object).fillna(False).astype(bool)
    tied = s.pivot(index=INDEX, columns="column", values="tied").astype(object).fillna(False).astype(bool)
    methods = method_order(s["method"], order)
    rows = [(*b, m) for b in dict.fromkeys(map(tuple, s[BLOCK].values)) for m in methods if (*b, m) in text.index]
    columns = list(dict.fromkeys(s["column"]))
    text, best, tied = (f.reindex(index=rows, columns=columns) for f in (text, best, tied))
    seeds = s.groupby(INDEX)["seeds"].max().reindex(rows)
    text = text.fillna("--")
    text.insert(0, "seeds", seeds.astype(str))
    best.insert(0, "seeds", False)
    tied.insert(0, "seeds", False)
    for f in (text, best, tied):
        f.columns.name = None
    return text, best.fillna(False).astype(bool), tied.fillna(False).astype(bool)


def note(summary: pd.DataFrame) -> str:
    """What the marks and the intervals mean, in one paragraph (plain text)."""
    tests = sorted(set(summary["test"]) - {""})
    how = " and ".join(tests) if tests else "no test (no per-image values)"
    return (f"Mean ± std over seeds where there are two or more; one seed: value [95% bootstrap interval over images]. "
            f"Bold: best method per column (baseline excluded); underlined: not significantly different from the "
            f"best (two-sided {how}, p >= {stats.ALPHA}, on the same prompts and seeds). Set-level metrics (FID, KID) "
            f"have no per-image values and are not tested.")


def to_markdown(text: pd.DataFrame, best: pd.DataFrame, tied: pd.DataFrame, names: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table: best cells in bold, not-significantly-worse ones underlined (``<ins>``)."""
    shown = text.where(~best, "**" + text + "**").where(~tied, "<ins>" + text + "</ins>").reset_index()
    shown["method"] = shown["method"].map(method_name)
    shown["concept"] = shown["concept"].map(lambda c: (names or {}).get(str(c), c))
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    rows = ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _latex_cell(text: str, best: bool, tied: bool) -> str:
    t = latex.escape(text)
    return rf"\textbf{{{t}}}" if best else rf"\underline{{{t}}}" if tied else t


def _column_chunks(text: pd.DataFrame, methods: list[str]) -> list[list[str]]:
    """Metric columns in as few consecutive groups as fit the page width next to the method column."""
    metrics = [c for c in text.columns if c != "seeds"]
    first = [methods, ["Method", "seeds"]]
    for parts in range(1, len(metrics) + 1):
        chunks = latex.split_evenly(metrics, parts)
        if all(latex.fits([*first, *([c, *text[c]] for c in chunk)]) for chunk in chunks):
            return chunks
    return [[c] for c in metrics]


def to_latex(text: pd.DataFrame, best: pd.DataFrame, tied: pd.DataFrame, summary_note: str,
             names: dict[str, str] | None = None) -> str:
    """One ``table`` float per (model, task, concept) block and group of columns that fits the page.

    Args:
        text: :func:`cells`' text.
        best: Its best marks.
        tied: Its not-significantly-worse marks.
        summary_note: The note under each block (:func:`note`).
        names: Concept key -> its name in the task.
    """
    names, out = names or {}, []
    for blk in dict.fromkeys(text.index.droplevel("method")):
        t, b, d = (f.xs(blk, level=BLOCK) for f in (text, best, tied))
        methods = [method_name(m) for m in t.index]
        chunks = _column_chunks(t, methods)
        for i, chunk in enumerate(chunks, start=1):
            part = f" (part {i} of {len(chunks)})" if len(chunks) > 1 else ""
            lines = [rf"\begin{{tabular}}{{l{'r' * (1 + len(chunk))}}}", r"\toprule",
                     " & ".join(["Method", "Seeds", *(latex.escape(c) for c in chunk)]) + r" \\", r"\midrule"]
            for method, name in zip(t.index, methods, strict=True):
                values = [_latex_cell(t.loc[method, c], b.loc[method, c], d.loc[method, c]) for c in chunk]
                lines.append(" & ".join([latex.escape(name), t.loc[method, "seeds"], *values]) + r" \\")
            lines += [r"\bottomrule", r"\end{tabular}"]
            model, task, concept = map(str, blk)
            caption = latex.escape(f"{task}: erasing {names.get(concept, concept)} from {model}, every metric{part}.")
            last = i == len(chunks)  # the note once per block, under its last part
            out.append(latex.table_float(lines, caption, latex.label("summary", model, task, concept, str(i)),
                                         latex.escape(summary_note) if last else ""))
    return "\n".join(out)


def to_html(text: pd.DataFrame, best: pd.DataFrame, tied: pd.DataFrame) -> str:
    """An HTML table (escaped): best cells bold, not-significantly-worse ones underlined; long headers wrap."""
    shown = text.map(lambda v: html.escape(str(v)))
    shown = shown.where(~best, "<b>" + shown + "</b>").where(~tied, "<u>" + shown + "</u>")
    shown.index = [html.escape(" / ".join([*map(str, i[:-1]), method_name(str(i[-1]))]) if isinstance(i, tuple)
                               else method_name(str(i))) for i in shown.index]
    shown.columns = [html.escape(str(c)) for c in shown.columns]
    return shown.to_html(escape=False, border=0, classes="summary")


__all__ = ["CELL", "cell_text", "cells", "headers", "note", "number", "to_html", "to_latex", "to_markdown"]
