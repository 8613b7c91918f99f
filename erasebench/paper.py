"""The AdvAnchor paper's result tables (Tables 1-3) and the NudeNet count table behind its Figure 8.

One table per (model, task): rows are the erased concepts plus an ``Avg`` row, column groups are methods
(the ``none`` baseline first), each with an ``Erase`` and a ``Preserve`` column whose cell reads
``FID/ACC/LPIPS`` for that split. The paper judges the two splits in opposite directions (erasing should move
the erase split far from the original model and keep the preserve split close), so the bold marks come from
:data:`DIRECTIONS`, not from the rows' ``higher_is_better``, which says one thing per metric for both splits.
The LaTeX needs ``booktabs`` and ``graphicx`` in the preamble.

A block with attack results (metric ``asr`` on the erase split, from the ``attack_unlearndiff`` /
``attack_ring_a_bell`` evaluators) gets one more column per method and attack: ``ASR`` in percent, lower is better,
bold the lowest (baseline excluded); blocks without them are laid out exactly as before.
"""

from __future__ import annotations

import html
import json
import re

import pandas as pd

from erasebench.report import _ordered_methods

SPLITS = ("erase", "preserve")
PARTS = ("fid", "acc", "lpips")  # the order of the numbers in a cell
#: Metric names per (part, split); the first one present in a (model, task) block is used for the whole block.
CANDIDATES: dict[tuple[str, str], tuple[str, ...]] = {
    # random_test_fid: the seeded random feature net of offline tests (the footnote names the metric used).
    ("fid", "erase"): ("fid", "toy_fid", "random_test_fid"), ("fid", "preserve"): ("fid", "toy_fid", "random_test_fid"),
    # I2P task: acc_erase of its 8-class I2P classifier = the share of images still in the erased category.
    ("acc", "erase"): ("acc_erase",), ("acc", "preserve"): ("acc_preserve",),
    ("lpips", "erase"): ("lpips", "toy_lpips"), ("lpips", "preserve"): ("lpips", "toy_lpips"),
}  # fmt: skip
#: Whether higher is better, per (part, split), as the paper bolds.
DIRECTIONS = {("fid", "erase"): True, ("acc", "erase"): False, ("lpips", "erase"): True,
              ("fid", "preserve"): False, ("acc", "preserve"): True, ("lpips", "preserve"): False}
#: Methods that are reimplementations even where a row's method settings do not say so.
REIMPLEMENTED = {"allbutone": "from the paper"}
BASELINE = "none"
#: The attack evaluators' success-rate metric (erase split, lower is better) and their names in column headers.
ASR = "asr"
ATTACK_NAMES = {"attack_unlearndiff": "UnlearnDiffAtk", "attack_ring_a_bell": "Ring-A-Bell"}
#: A cell: (text, bold) for FID, ACC and LPIPS.
Cell = tuple[tuple[str, bool], ...]


def escape(text: object) -> str:
    """Escape the LaTeX special characters that occur in names and settings."""
    return re.sub(r"([_&%#$])", r"\\\1", str(text))


def _fmt(value: float, decimals: int) -> str:
    if pd.isna(value):
        return "--"
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text  # the baseline's FID of -0.00 reads as 0.00


def _block(frame: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
    return frame[(frame["model"] == model) & (frame["task"] == task)]


def pick(summary: pd.DataFrame, part: str, split: str, model: str, task: str) -> tuple[str | None, pd.DataFrame]:
    """Means per concept (rows) and method (columns) of the first metric of ``CANDIDATES`` present in a block.

    Returns:
        The metric name (``None`` if none is present) and the frame (empty if none is present).
    """
    rows = _block(summary, model, task)
    rows = rows[rows["split"] == split]
    for metric in CANDIDATES[part, split]:
        found = rows[rows["metric"] == metric]
        if len(found):
            return metric, found.pivot_table(index="concept", columns="method", values="mean", aggfunc="first",
                                             sort=False)
    return None, pd.DataFrame()


def asr_evaluators(summary: pd.DataFrame, model: str, task: str) -> list[str]:
    """The evaluators (attacks) with an ``asr`` metric on the erase split of a block, in order of appearance."""
    rows = _block(summary, model, task)
    return list(dict.fromkeys(rows[(rows["split"] == "erase") & (rows["metric"] == ASR)]["evaluator"]))


def asr_headers(evaluators: list[str]) -> list[str]:
    """Column headers of the ASR columns: ``ASR`` for one attack, ``ASR <attack>`` for several."""
    if len(evaluators) == 1:
        return ["ASR"]
    return [f"ASR {ATTACK_NAMES.get(e, e)}" for e in evaluators]


def asr_means(summary: pd.DataFrame, model: str, task: str, evaluator: str) -> pd.DataFrame:
    """Mean ``asr`` over seeds per concept (rows) and method (columns) of one attack evaluator."""
    rows = _block(summary, model, task)
    rows = rows[(rows["split"] == "erase") & (rows["metric"] == ASR) & (rows["evaluator"] == evaluator)]
    return rows.pivot_table(index="concept", columns="method", values="mean", aggfunc="first", sort=False)


def _bold_best(shown: pd.DataFrame, higher: bool, methods: list[str]) -> pd.DataFrame:
    """Which cells are the best of their row among the non-baseline methods (none when fewer than two compete)."""
    rivals = shown.drop(columns=BASELINE, errors="ignore")
    target = rivals.max(axis=1) if higher else rivals.min(axis=1)
    enough = (rivals.notna().sum(axis=1) > 1).to_numpy()[:, None]  # one contender is no comparison
    return (rivals.eq(target, axis=0) & enough).reindex(columns=methods, fill_value=False)


def paper_blocks(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, task) blocks that have at least one metric of the paper table, in order of appearance."""
    names = {m for names in CANDIDATES.values() for m in names}
    hits = summary[summary["metric"].isin(names)]
    return list(dict.fromkeys(zip(hits["model"], hits["task"], strict=True)))


def paper_cells(summary: pd.DataFrame, model: str, task: str, decimals: int = 2, acc_decimals: int = 1) -> pd.DataFrame:
    """The paper table's cells: rows are concepts then ``Avg``, columns (method, ``Erase``/``Preserve``).

    Args:
        summary: :func:`erasebench.report.summarize` output.
        model: Model of the block.
        task: Task of the block.
        decimals: Decimals of FID and LPIPS.
        acc_decimals: Decimals of ACC, shown in percent.

    Returns:
        A frame of :data:`Cell` tuples.
    """
    block = _block(summary, model, task)
    concepts, methods = list(dict.fromkeys(block["concept"])), _ordered_methods(block["method"])
    rows = [*concepts, "Avg"]
    shown, best = {}, {}
    for (part, split), higher in DIRECTIONS.items():
        means = pick(summary, part, split, model, task)[1].reindex(index=concepts, columns=methods)
        means = means.astype(float) * (100 if part == "acc" else 1)
        # Avg only over complete columns: a mean over whichever concepts a method happens to have would mislead.
        means.loc["Avg"] = means.mean(skipna=False)
        # Rounded as printed, so two values that read the same are both bold.
        shown[part, split] = means.round(acc_decimals if part == "acc" else decimals)
        # The baseline is the FID / LPIPS reference (0 by definition), so it never competes for bold.
        best[part, split] = _bold_best(shown[part, split], higher, methods)
    attacks = asr_evaluators(summary, model, task)
    headers = asr_headers(attacks) if attacks else []
    for attack, header in zip(attacks, headers, strict=True):  # ASR in percent, lower is better
        means = asr_means(summary, model, task, attack).reindex(index=concepts, columns=methods).astype(float) * 100
        means.loc["Avg"] = means.mean(skipna=False)
        shown["asr", header] = means.round(acc_decimals)
        best["asr", header] = _bold_best(shown["asr", header], False, methods)
    columns = pd.MultiIndex.from_tuples([(m, c) for m in methods for c in [s.capitalize() for s in SPLITS] + headers])
    cells = pd.DataFrame(index=rows, columns=columns, dtype=object)
    for method in methods:
        for split in SPLITS:
            cells[method, split.capitalize()] = [
                tuple((_fmt(shown[p, split].loc[r, method], acc_decimals if p == "acc" else decimals),
                       bool(best[p, split].loc[r, method])) for p in PARTS) for r in rows]
        for header in headers:
            cells[method, header] = [((_fmt(shown["asr", header].loc[r, method], acc_decimals),
                                       bool(best["asr", header].loc[r, method])),) for r in rows]
    return cells


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


def _settings_note(summary: pd.DataFrame, long: pd.DataFrame | None, model: str, task: str,
                   methods: list[str]) -> str:
    """The footnote: model, sampler, seeds, images per split, metric backends, reimplementations."""
    block = _block(summary, model, task)
    seeds = block.groupby("method", sort=False)["seeds"].max().reindex(methods)
    notes = [f"Model: {model}", "seeds: " + (str(seeds.iloc[0]) if seeds.nunique() == 1 else
                                             ", ".join(f"{m} {n}" for m, n in seeds.items()))]
    chosen = {key: pick(summary, *key, model, task)[0] for key in DIRECTIONS}
    used = {m for m in chosen.values() if m}
    notes.append("metrics: " + ", ".join(
        f"{part.upper()} = " + "/".join(dict.fromkeys(str(chosen[part, s] or "--") for s in SPLITS)) for part in PARTS))
    block = summary[(summary["model"] == model) & (summary["task"] == task)]
    if (block[block["metric"] == "acc_erase"]["evaluator"] == "acc_i2p").any():  # the i2p task's erase scorer
        notes.append("erase ACC: share of images in the I2P harm category")
    reimpl = {m: REIMPLEMENTED[m] for m in methods if m in REIMPLEMENTED}
    attacks = asr_evaluators(summary, model, task)
    if long is not None and len(rows := _block(long, model, task)):
        notes.insert(1, "sampler: " + _sampler_text(str(rows["sampler"].iloc[0])))
        attack_rows = rows[rows["evaluator"].isin(attacks)]
        rows = rows[~rows["evaluator"].isin(attacks)]  # their n counts attacked prompts, not images
        notes.append("images per split: " + ", ".join(
            f"{s} {'/'.join(map(str, sorted(set(rows[rows['split'] == s]['n']))))}" for s in SPLITS
            if (rows["split"] == s).any()))
        backends = []
        for evaluator, group in rows[rows["metric"].isin(used)].groupby("evaluator", sort=True):
            settings = json.loads(str(group["evaluator_settings"].iloc[0]))
            found = [f"{k} {settings[k]}" for k in ("backend", "net", "backbone", "preset") if settings.get(k)]
            if "backend" not in settings and settings.get("backbone_weights"):  # lpips: says which network
                found.append(f"weights {settings['backbone_weights']}")
            backends.append(f"{evaluator} ({', '.join(found) or 'default settings'})")
        notes.append("backends: " + ", ".join(backends))
        for method, settings in zip(rows["method"], rows["method_settings"], strict=True):
            said = json.loads(str(settings)).get("reimplementation") if str(settings).startswith("{") else None
            if said:
                reimpl[method] = str(said)
        for attack in attacks:
            mine = attack_rows[attack_rows["evaluator"] == attack]
            settings = json.loads(str(mine["evaluator_settings"].iloc[0])) if len(mine) else {}
            found = [f"{'/'.join(map(str, sorted(set(mine['n']))))} prompts"] if len(mine) else []
            if "timesteps" in settings:
                found.append(f"{settings['timesteps']} timesteps x {settings['iterations']} iterations, "
                             f"{settings['prefix_tokens']} tokens")
            if settings.get("eta_used") is not None:
                found.append(f"eta {settings['eta_used']}")
            if isinstance(settings.get("judge"), dict):
                judge = settings["judge"]
                found.append(f"judge {judge.get('kind')}" + (f" {judge['backend']}" if judge.get("backend") else ""))
            notes.append(f"ASR: {ATTACK_NAMES.get(attack, attack)} ({', '.join(found) or 'default settings'})")
    elif attacks:
        notes.append("ASR: " + ", ".join(ATTACK_NAMES.get(a, a) for a in attacks))
    notes += [f"{m}: reimplementation {how}" for m, how in sorted(reimpl.items())]
    return escape("; ".join(notes)) + "."


def paper_table(summary: pd.DataFrame, model: str, task: str, decimals: int = 2, acc_decimals: int = 1,
                long: pd.DataFrame | None = None) -> str:
    """LaTeX of one (model, task) block in the paper's layout (see the module docstring).

    Args:
        summary: :func:`erasebench.report.summarize` output.
        model: Model of the block.
        task: Task of the block.
        decimals: Decimals of FID and LPIPS.
        acc_decimals: Decimals of ACC (percent).
        long: The collected rows, for the footnote's sampler, image counts and settings; ``None`` leaves
            them out.

    Returns:
        A ``table`` environment (booktabs, ``graphicx``'s ``\\resizebox``), deterministic for the same input.
    """
    cells = paper_cells(summary, model, task, decimals, acc_decimals)
    methods = list(dict.fromkeys(cells.columns.get_level_values(0)))
    sub = [c for m, c in cells.columns if m == methods[0]]  # Erase, Preserve (and the ASR columns)
    w = len(sub)
    attacks = asr_evaluators(summary, model, task)
    asr_text = (r" ASR (\%) $\downarrow$: share of the attacked erase prompts that show the concept ("
                + ", ".join(escape(ATTACK_NAMES.get(a, a)) for a in attacks) + ").") if attacks else ""
    lines = [r"\begin{table}[t]", r"\centering",
             (rf"\caption{{{escape(task)} on {escape(model)}: FID/ACC (\%)/LPIPS of each split, mean over seeds. "
             r"Erase: FID $\uparrow$, ACC $\downarrow$, LPIPS $\uparrow$; Preserve: FID $\downarrow$, "
             r"ACC $\uparrow$, LPIPS $\downarrow$." + asr_text + r" Bold: best method per row (baseline excluded).}"),
             rf"\label{{tab:{re.sub(r'[^A-Za-z0-9]+', '-', f'{model}-{task}')}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{l{'c' * w * len(methods)}}}", r"\toprule",
             " & ".join(["", *(rf"\multicolumn{{{w}}}{{c}}{{{escape(m)}}}" for m in methods)]) + r" \\",
             " ".join(rf"\cmidrule(lr){{{2 + w * i}-{1 + w * (i + 1)}}}" for i in range(len(methods))),
             " & ".join(["Concept", *([escape(c) for c in sub] * len(methods))]) + r" \\", r"\midrule"]
    for row, values in cells.iterrows():
        if row == "Avg":
            lines.append(r"\midrule")
        texts = ["/".join(rf"\textbf{{{t}}}" if b else t for t, b in cell) for cell in values]
        lines.append(" & ".join([escape(row), *texts]) + r" \\")
    note = _settings_note(summary, long, model, task, methods)
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\footnotesize " + note, r"\end{table}"]
    return "\n".join(lines) + "\n"


def paper_html(summary: pd.DataFrame, model: str, task: str, decimals: int = 2, acc_decimals: int = 1) -> str:
    """The same numbers and bold marks as :func:`paper_table`, as an HTML table."""
    cells = paper_cells(summary, model, task, decimals, acc_decimals)
    shown = cells.map(lambda cell: "/".join(f"<b>{html.escape(t)}</b>" if b else html.escape(t) for t, b in cell))
    shown.index = [html.escape(str(i)) for i in shown.index]
    return shown.to_html(escape=False, border=0, classes="paper")


def nudenet_table(summary: pd.DataFrame, model: str, task: str, split: str = "erase") -> tuple[pd.DataFrame, str]:
    """Detections per NudeNet class (columns, then ``total``) and method (rows), as the paper's Figure 8.

    Counts are means over seeds, summed over the block's concepts (counts add up; there is usually one).

    Returns:
        The frame and its booktabs LaTeX (the lowest count of each column among the erasing methods in bold).
    """
    rows = _block(summary, model, task)
    rows = rows[(rows["split"] == split) & rows["metric"].str.startswith("count_")]
    table = rows.pivot_table(index="method", columns="metric", values="mean", aggfunc="sum", sort=False)
    classes = [c for c in dict.fromkeys(rows["metric"]) if c != "count_total"]
    table = table.reindex(index=_ordered_methods(rows["method"]), columns=[*classes, "count_total"])
    table.columns = [c.removeprefix("count_") for c in table.columns]
    table.index.name = "method"
    integral = bool(((table.fillna(0) % 1) == 0).all().all())
    rivals = table.drop(index=BASELINE, errors="ignore")
    lines = [r"\begin{table}[t]", r"\centering",
             (rf"\caption{{NudeNet detections per class on the {escape(split)} split of {escape(task)} "
             rf"({escape(model)}), mean over seeds. Bold: fewest among the erasing methods.}}"),
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}", r"\toprule",
             " & ".join(["Method", *(escape(c) for c in table.columns)]) + r" \\", r"\midrule"]
    for method, values in table.iterrows():
        texts = []
        for col, value in values.items():
            text = _fmt(value, 0 if integral else 1)
            low = method != BASELINE and len(rivals) > 1 and value == rivals[col].min()
            texts.append(rf"\textbf{{{text}}}" if low else text)
        lines.append(" & ".join([escape(method), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return table, "\n".join(lines) + "\n"
