"""The AdvAnchor paper's result tables (Tables 1-3), and the same numbers with methods as rows when they do not fit.

Each cell reads ``FID/ACC/LPIPS`` of one split (ACC in percent), mean over seeds; an attack's ``ASR`` gets a
column of its own. Directions come from each row's metric metadata, per split (erase: FID and LPIPS up, ACC
down; preserve: the reverse), so bold always marks the best method in the sense the paper judges;
underlined values are not significantly different from the best (:mod:`erasebench.report.summary`). The
baseline is the FID / LPIPS reference and never competes.

Layouts (``layout``):

* ``advanchor``: rows are concepts then ``Avg``; column groups are methods, each with ``Erase`` and ``Preserve``.
* ``rows``: rows are methods; column groups are concepts (then ``Avg``); split into several tables when the
  concepts do not fit one page width.
* ``auto`` (default): ``advanchor`` when it fits the page at 8 pt, else ``rows``.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from erasebench import stats
from erasebench.report import latex
from erasebench.report.plugins import evaluator_description, evaluator_name, method_name, method_provenance
from erasebench.report.summary import (
    PARTS,
    asr_rows,
    attacks,
    best_of,
    block,
    direction,
    method_order,
    pick,
    wide,
)
from erasebench.report.tables import number

SPLITS = ("erase", "preserve")
LAYOUTS = ("auto", "advanchor", "rows")
#: One printed number: (text, bold, underlined).
Mark = tuple[str, bool, bool]


def _quantities(summary: pd.DataFrame, model: str, task: str) -> list[tuple[str, str, pd.DataFrame]]:
    """(column name, split, summary rows) of every quantity the table shows: FID/ACC/LPIPS per split, then ASR."""
    # A quantity the block lacks (LPIPS of the I2P task, any preserve split there) is left out, not printed as "--".
    out = [(split.capitalize(), split, rows) for split in SPLITS for part in PARTS
           if len(rows := pick(summary, part, split, model, task))]
    names = attacks(summary, model, task)
    for name in names:
        out.append(("ASR" if len(names) == 1 else f"ASR {evaluator_name(name)}", "erase",
                    asr_rows(summary, model, task, name)))
    return out


def _marks(rows: pd.DataFrame, concepts: list[str], methods: list[str]) -> dict[tuple[str, str], Mark]:
    """(concept or ``Avg``, method) -> printed number and marks, for one quantity."""
    if rows.empty:
        return {}
    unit, higher = str(rows["unit"].iloc[0]), direction(rows["higher_is_better"].iloc[0])
    means = wide(rows).reindex(index=concepts, columns=methods).astype(float)
    flags = {k: wide(rows, k).reindex(index=concepts, columns=methods).fillna(False).astype(bool)
             for k in ("best", "tied")}
    # Avg only over complete columns: a mean over whichever concepts a method happens to have would mislead.
    avg = means.mean(skipna=False)
    avg_best = set(best_of(avg, higher))
    out = {}
    for m in methods:
        for c in concepts:
            out[c, m] = (number(means.loc[c, m], unit), bool(flags["best"].loc[c, m]), bool(flags["tied"].loc[c, m]))
        out["Avg", m] = (number(avg[m], unit), m in avg_best, False)
    return out


def paper_cells(summary: pd.DataFrame, model: str, task: str, order: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows: concepts then ``Avg``; columns: (method, ``Erase``/``Preserve``/ASR...); values: tuples of :data:`Mark`."""
    blk = block(summary, model, task)
    concepts, methods = list(dict.fromkeys(blk["concept"])), method_order(blk["method"], order)
    quantities = _quantities(summary, model, task)
    marks = [(name, _marks(rows, concepts, methods)) for name, _, rows in quantities]
    groups = list(dict.fromkeys(name for name, _ in marks))
    columns = pd.MultiIndex.from_tuples([(m, g) for m in methods for g in groups])
    # One concept: its row is the average; printing both would repeat every number.
    cells = pd.DataFrame(index=[*concepts, "Avg"] if len(concepts) > 1 else concepts, columns=columns, dtype=object)
    for m in methods:
        for g in groups:
            parts = [found for name, found in marks if name == g]
            cells[m, g] = [tuple(p.get((r, m), ("--", False, False)) for p in parts) for r in cells.index]
    return cells


def concept_names(summary: pd.DataFrame) -> dict[str, str]:
    """Concept key -> the task's name for it (``van_gogh`` -> ``Van Gogh``); ``Avg`` stays."""
    if "concept_text" not in summary:
        return {}
    return dict(zip(summary["concept"].astype(str), summary["concept_text"].astype(str), strict=True))


def _tex(cell: tuple[Mark, ...]) -> str:
    return "/".join(rf"\textbf{{{t}}}" if b else rf"\underline{{{t}}}" if u else t for t, b, u in cell)


def _plain(cell: tuple[Mark, ...]) -> str:
    return "/".join(t for t, _, _ in cell)


def _advanchor(cells: pd.DataFrame, methods: list[str], groups: list[str], names: dict[str, str]) -> list[str]:
    w = len(groups)
    lines = [rf"\begin{{tabular}}{{l{'c' * w * len(methods)}}}", r"\toprule",
             " & ".join(["", *(rf"\multicolumn{{{w}}}{{c}}{{{latex.escape(method_name(m))}}}" for m in methods)]) + r" \\",
             " ".join(rf"\cmidrule(lr){{{2 + w * i}-{1 + w * (i + 1)}}}" for i in range(len(methods))),
             " & ".join(["Concept", *([latex.escape(g) for g in groups] * len(methods))]) + r" \\", r"\midrule"]
    for row, values in cells.iterrows():
        if row == "Avg":
            lines.append(r"\midrule")
        lines.append(" & ".join([latex.escape(names.get(str(row), row)), *map(_tex, values)]) + r" \\")
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def _rows(cells: pd.DataFrame, methods: list[str], groups: list[str], concepts: list[str],
          names: dict[str, str]) -> list[str]:
    w = len(groups)
    lines = [rf"\begin{{tabular}}{{l{'c' * w * len(concepts)}}}", r"\toprule",
             " & ".join(["", *(rf"\multicolumn{{{w}}}{{c}}{{{latex.escape(names.get(c, c))}}}" for c in concepts)])
             + r" \\",
             " ".join(rf"\cmidrule(lr){{{2 + w * i}-{1 + w * (i + 1)}}}" for i in range(len(concepts))),
             " & ".join(["Method", *([latex.escape(g) for g in groups] * len(concepts))]) + r" \\", r"\midrule"]
    for m in methods:
        values = [_tex(cells.loc[c, (m, g)]) for c in concepts for g in groups]
        lines.append(" & ".join([latex.escape(method_name(m)), *values]) + r" \\")
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def _advanchor_fits(cells: pd.DataFrame, methods: list[str], groups: list[str]) -> bool:
    columns = [[str(c) for c in cells.index]]
    for m in methods:
        texts = [[_plain(cells.loc[r, (m, g)]) for r in cells.index] + [g] for g in groups]
        # the method name spans its group: each column needs its share of it
        share = " " * (len(method_name(m)) // len(groups))
        columns += [[*t, share] for t in texts]
    return latex.fits(columns)


def _concept_chunks(cells: pd.DataFrame, methods: list[str], groups: list[str]) -> list[list[str]]:
    rows = list(cells.index)
    first = [[method_name(m) for m in methods] + ["Method"]]
    for parts in range(1, len(rows) + 1):
        chunks = latex.split_evenly(rows, parts)
        if all(latex.fits(first + [[_plain(cells.loc[c, (m, g)]) for m in methods] + [g, c[: 20 // len(groups)]]
                                   for c in chunk for g in groups]) for chunk in chunks):
            return chunks
    return [[r] for r in rows]


def paper_table(summary: pd.DataFrame, model: str, task: str, long: pd.DataFrame | None = None,
                layout: str = "auto", order: tuple[str, ...] = ()) -> str:
    """LaTeX of one (model, task) block (see the module docstring): one or more ``table`` floats.

    Args:
        summary: :func:`erasebench.report.summary.summarize` output.
        model: Model of the block.
        task: Task of the block.
        long: The collected rows, for the note's sampler, image counts and settings; ``None`` leaves them out.
        layout: ``auto``, ``advanchor`` or ``rows``.
        order: The sweep's method order.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    cells = paper_cells(summary, model, task, order)
    methods = list(dict.fromkeys(cells.columns.get_level_values(0)))
    groups = list(dict.fromkeys(cells.columns.get_level_values(1)))
    note = settings_note(summary, long, model, task, methods)
    caption = _caption(summary, model, task)
    names = concept_names(summary)
    key = latex.label(model, task)
    if layout == "advanchor" or (layout == "auto" and _advanchor_fits(cells, methods, groups)):
        return latex.table_float(_advanchor(cells, methods, groups, names), caption, key, note)
    chunks = _concept_chunks(cells, methods, groups)
    out = []
    for i, chunk in enumerate(chunks, start=1):
        part = f" (part {i} of {len(chunks)})" if len(chunks) > 1 else ""
        out.append(latex.table_float(_rows(cells, methods, groups, chunk, names), caption + part,
                                     key + (f"-{i}" if len(chunks) > 1 else ""), note))
    return "\n".join(out)


def _caption(summary: pd.DataFrame, model: str, task: str) -> str:
    arrows = []
    for split in SPLITS:
        parts = []
        for part in PARTS:
            rows = pick(summary, part, split, model, task)
            if len(rows):
                parts.append(part + {True: r" $\uparrow$", False: r" $\downarrow$", None: ""}[
                    direction(rows["higher_is_better"].iloc[0])])
        if parts:
            arrows.append(f"{split.capitalize()}: " + ", ".join(parts))
    present = [p for p in PARTS if any(len(pick(summary, p, s, model, task)) for s in SPLITS)]
    shown = "/".join(p if p != "ACC" else r"ACC (\%)" for p in present)
    asr = r" ASR (\%) $\downarrow$: share of the attacked erase prompts that show the concept." \
        if attacks(summary, model, task) else ""
    return (rf"{latex.escape(task)} on {latex.escape(model)}: {shown} of each split, mean over seeds. "
            + "; ".join(arrows) + "." + asr + r" Bold: best method (baseline excluded); underlined: not "
            r"significantly different from the best (see note).")


def _sampler_text(recorded: str) -> str:
    """``DDIM, 25 steps, CFG 5.0, eta 0.0, 32x32`` from a row's sampler JSON (the JSON itself if unreadable)."""
    try:
        s = json.loads(recorded)
    except ValueError:
        return recorded
    parts = [str(s["scheduler"]).upper()] if s.get("scheduler") else []
    parts += [f"{s['steps']} steps"] if "steps" in s else []
    parts += [f"CFG {s['guidance_scale']}"] if "guidance_scale" in s else []
    parts += [f"eta {s['eta']}"] if "eta" in s else []
    parts += [f"{s['height']}x{s['width']}"] if "height" in s and "width" in s else []
    return ", ".join(parts) or recorded


def settings_note(summary: pd.DataFrame, long: pd.DataFrame | None, model: str, task: str,
                  methods: list[str]) -> str:
    """The note under a paper table: model, sampler, seeds, images, metrics and backends, tests, provenance."""
    blk = block(summary, model, task)
    seeds = blk.groupby("method", sort=False)["seeds"].max().reindex(methods)
    notes = [f"Model: {model}", "seeds: " + (str(seeds.iloc[0]) if seeds.nunique() == 1 else
                                             ", ".join(f"{method_name(m)} {n}" for m, n in seeds.items()))]
    used = {(part, s): pick(summary, part, s, model, task) for part in PARTS for s in SPLITS}
    named = {part: "/".join(dict.fromkeys(str(r["metric"].iloc[0]) for (p, _), r in used.items() if p == part and len(r)))
             for part in PARTS}
    notes.append("metrics: " + ", ".join(f"{part} = {name}" for part, name in named.items() if name))
    provenance = {m: method_provenance(m) for m in methods}
    if long is not None and len(rows := block(long, model, task)):
        names = attacks(summary, model, task)
        notes.insert(1, "sampler: " + _sampler_text(str(rows["sampler"].iloc[0])))
        plain = rows[~rows["evaluator"].isin(names)]  # an attack's n counts attacked prompts, not images
        notes.append("images per split: " + ", ".join(
            f"{s} {'/'.join(map(str, sorted(set(plain[plain['split'] == s]['n']))))}" for s in SPLITS
            if (plain["split"] == s).any()))
        shown = {(r["evaluator"].iloc[0], r["metric"].iloc[0]) for r in used.values() if len(r)}
        evaluators = sorted({e for e, _ in shown} | set(names))
        notes.append("evaluators: " + ", ".join(evaluator_description(e, str(rows[rows["evaluator"] == e][
            "evaluator_settings"].iloc[0])) for e in evaluators if (rows["evaluator"] == e).any()))
        for m, settings in zip(rows["method"], rows["method_settings"].astype(str), strict=True):
            provenance[m] = method_provenance(m, settings) or provenance.get(m, "")
    tests = sorted(set(blk["test"]) - {""})
    notes.append(("tests: " + " / ".join(tests) + " against the best method, pairs of images with the same prompt and "
                  f"seeds, two-sided, alpha {stats.ALPHA}") if tests else "no paired tests (no per-image values)")
    notes += [f"{method_name(m)}: {how}" for m, how in provenance.items() if how]
    return latex.escape("; ".join(notes)) + "."


def paper_html(summary: pd.DataFrame, model: str, task: str, order: tuple[str, ...] = ()) -> str:
    """The same numbers and marks as :func:`paper_table`, methods as rows, as an HTML table."""
    cells = paper_cells(summary, model, task, order)
    methods = list(dict.fromkeys(cells.columns.get_level_values(0)))
    groups = list(dict.fromkeys(cells.columns.get_level_values(1)))

    def mark(cell: tuple[Mark, ...]) -> str:
        return "/".join(f"<b>{html.escape(t)}</b>" if b else f"<u>{html.escape(t)}</u>" if u else html.escape(t)
                        for t, b, u in cell)

    names = concept_names(summary)
    shown = pd.DataFrame({(names.get(c, c), g): [mark(cells.loc[c, (m, g)]) for m in methods]
                          for c in cells.index for g in groups},
                         index=[html.escape(method_name(m)) for m in methods])
    shown.columns = pd.MultiIndex.from_tuples([(html.escape(str(c)), html.escape(g)) for c, g in shown.columns])
    return shown.to_html(escape=False, border=0, classes="paper")


def nudenet_table(summary: pd.DataFrame, model: str, task: str, split: str = "erase",
                  order: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """Detections per NudeNet class (columns, then the total) and method (rows), as the paper's Figure 8.

    Rows are the metrics whose aggregate over images is a sum (detection counts), found by their metadata;
    counts are means over seeds, summed over the block's concepts.

    Returns:
        The frame (columns: display names) and its LaTeX (the lowest count of each column in bold, baseline excluded).
    """
    rows = block(summary, model, task)
    rows = rows[(rows["split"] == split) & rows["aggregate"].astype(str).str.startswith("images=sum")]
    if rows.empty:
        return pd.DataFrame(), ""
    table = rows.pivot_table(index="method", columns="metric_display", values="mean", aggfunc="sum", sort=False)
    table = table.reindex(index=method_order(rows["method"], order), columns=list(dict.fromkeys(rows["metric_display"])))
    table.index.name = "method"
    integral = bool(((table.fillna(0) % 1) == 0).all().all())
    lines = [rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}", r"\toprule",
             " & ".join(["Method", *(latex.escape(c) for c in table.columns)]) + r" \\", r"\midrule"]
    lows = {c: set(best_of(table[c], False)) for c in table.columns}
    for method, values in table.iterrows():
        texts = [(rf"\textbf{{{t}}}" if method in lows[c] else t)
                 for c, t in ((c, number(v, "", 0 if integral else 1)) for c, v in values.items())]
        lines.append(" & ".join([latex.escape(method_name(method)), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = latex.escape(f"NudeNet detections per class on the {split} split of {task} ({model}), mean over "
                           "seeds. Bold: fewest among the erasing methods.")
    if not latex.fits([[str(i) for i in table.index], *([c, "0000"] for c in table.columns)]):
        # Many classes: one class per row instead (the transpose always fits a page).
        return table, _nudenet_transposed(table, lows, integral, caption, model, task)
    return table, latex.table_float(lines, caption, latex.label("nudenet", model, task))


def _nudenet_transposed(table: pd.DataFrame, lows: dict[str, set[str]], integral: bool, caption: str, model: str,
                        task: str) -> str:
    lines = [rf"\begin{{tabular}}{{l{'r' * len(table.index)}}}", r"\toprule",
             " & ".join(["Class", *(latex.escape(method_name(m)) for m in table.index)]) + r" \\", r"\midrule"]
    for c in table.columns:
        texts = [(rf"\textbf{{{t}}}" if m in lows[c] else t)
                 for m, t in ((m, number(table.loc[m, c], "", 0 if integral else 1)) for m in table.index)]
        lines.append(" & ".join([latex.escape(c), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return latex.table_float(lines, caption, latex.label("nudenet", model, task))


__all__ = ["LAYOUTS", "nudenet_table", "paper_cells", "paper_html", "paper_table", "settings_note"]
