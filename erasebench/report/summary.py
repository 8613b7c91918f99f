"""From rows to cells: mean over seeds, spread, interval, the best method and who is not worse than it.

A *cell* is one (model, task, concept, evaluator, split, metric): the methods compete there. Per method:

* ``mean`` over seeds, ``std`` (ddof 1) only with two or more seeds, ``seeds`` = seeds with a finite value;
* ``ci_low`` / ``ci_high``: one seed: the run's own interval (a bootstrap over its images, see
  :mod:`erasebench.stats`); several: a Student-t interval of the mean over seeds; ``ci_method`` says which;
* ``best``: the best mean in the metric's direction on that split (:func:`best_of`), the baseline excluded;
* ``p_vs_best`` / ``test`` / ``tied``: a paired test against the best method on the same prompts, image seeds
  and run seeds (exact McNemar for 0/1 outcomes, a paired bootstrap otherwise); ``tied`` = not significantly
  different at :data:`erasebench.stats.ALPHA`. Set-level metrics (FID, KID) have no per-image values: untested.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from erasebench import stats

BASELINE = "none"
GROUP = ["model", "task", "concept", "method", "evaluator", "split", "metric"]
CELL = ["model", "task", "concept", "evaluator", "split", "metric"]
BLOCK = ["model", "task", "concept"]  # methods are compared within a block
#: The quantities the paper tables print, found by the metric's display name (its last word).
PARTS = ("FID", "ACC", "LPIPS")
META = ["higher_is_better", "metric_display", "unit", "aggregate", "concept_text"]


def method_order(methods: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """The methods in one order for every table and figure: the baseline first, then ``preferred`` (the sweep's
    order), then the rest in order of appearance."""
    names = list(dict.fromkeys(methods))
    rank = {m: i for i, m in enumerate(preferred)}
    return sorted(names, key=lambda m: (m != BASELINE, rank.get(m, len(rank)), names.index(m)))


def direction(value: object) -> bool | None:
    """A row's ``higher_is_better`` as True, False or None (neither)."""
    text = str(value).strip().lower()
    return True if text == "true" else False if text == "false" else None


def best_of(means: pd.Series, higher: bool | None, baseline: str = BASELINE) -> list[str]:
    """The methods with the best mean of a cell (ties share it); never the baseline, none for fewer than two
    competitors or a metric with no direction.

    Args:
        means: Mean per method (index: method names); NaN = no value.
        higher: Whether higher is better on this split.
        baseline: The unmodified model's name, which is a reference and never competes.
    """
    rivals = means.drop(index=baseline, errors="ignore").dropna()
    if higher is None or len(rivals) < 2:
        return []
    target = rivals.max() if higher else rivals.min()
    return [m for m, v in rivals.items() if math.isclose(v, target, rel_tol=1e-12, abs_tol=1e-12)]


def _spread(group: pd.DataFrame) -> pd.Series:
    values = group["value"].to_numpy(dtype=float)
    first = group.iloc[0]
    if len(values) >= 2:
        low, high = stats.t_interval(values)
        how = f"t {stats.LEVEL:.0%} over {len(values)} seeds"
    else:
        low, high, how = first["ci_low"], first["ci_high"], first["ci_method"]
    return pd.Series({"mean": values.mean(), "std": values.std(ddof=1) if len(values) >= 2 else math.nan,
                      "seeds": len(values), "ci_low": low, "ci_high": high, "ci_method": how,
                      **{k: first[k] for k in META}})


def _pairs(mine: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image values of methods ``a`` and ``b`` among one cell's images, matched on run seed and image."""
    on = ["seed", "index", "prompt", "image_seed"]
    left = mine[mine["method"] == a][[*on, "value"]]
    right = mine[mine["method"] == b][[*on, "value"]]
    both = left.merge(right, on=on, suffixes=("_a", "_b"))  # NaN prompts (attacks) never match: no pairing
    return both["value_a"].to_numpy(float), both["value_b"].to_numpy(float)


def _significance(out: pd.DataFrame, images: pd.DataFrame | None, alpha: float) -> pd.DataFrame:
    out = out.assign(best=False, p_vs_best=math.nan, test="", tied=False)
    by_cell: dict[tuple, pd.DataFrame] = {}
    if images is not None and len(images):
        images = images.assign(prompt=images["prompt"].fillna("\0none"), image_seed=images["image_seed"].astype(str))
        by_cell = {tuple(k): g for k, g in images.groupby(CELL, sort=False)}  # split once, not per method pair
    for cell, group in out.groupby(CELL, sort=False):
        means = group.set_index("method")["mean"]
        winners = best_of(means, direction(group["higher_is_better"].iloc[0]))
        out.loc[group.index[group["method"].isin(winners)], "best"] = True
        mine = by_cell.get(tuple(cell))
        if not winners or mine is None:
            continue
        for idx, method in group["method"].items():
            if method == BASELINE or method in winners or not math.isfinite(means[method]):
                continue
            a, b = _pairs(mine, method, winners[0])
            if len(a) < 2:
                continue
            p, test = stats.paired_p(a, b)
            out.loc[idx, ["p_vs_best", "test", "tied"]] = [p, test, p >= alpha]
    return out


def summarize(df: pd.DataFrame, images: pd.DataFrame | None = None, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """One row per (model, task, concept, method, evaluator, split, metric); see the module docstring.

    Args:
        df: The collected rows (:func:`erasebench.report.collect.collect`).
        images: Their per-image values (:func:`erasebench.report.collect.per_image`), for the paired tests;
            ``None`` = no tests.
        alpha: Level of the tests.
    """
    frame = df.copy()
    for col in ("ci_low", "ci_high"):
        frame[col] = frame[col].astype(float) if col in frame else math.nan
    for col in ("ci_method", *META[1:]):
        frame[col] = frame[col].fillna("") if col in frame else ""
    if "concept_text" in frame:
        frame["concept_text"] = frame["concept_text"].where(frame["concept_text"] != "", frame["concept"])
    rows = [pd.Series({**dict(zip(GROUP, key, strict=True)), **_spread(g.sort_values("seed"))})
            for key, g in frame.groupby(GROUP, sort=False)]
    out = pd.DataFrame(rows).reset_index(drop=True)
    out["seeds"] = out["seeds"].astype(int)
    return _significance(out, images, alpha)


def part_of(display: str) -> str | None:
    """Which paper quantity a metric is, from its display name (``toy FID`` -> ``FID``); ``None`` if none."""
    word = str(display).split()[-1].upper() if str(display).split() else ""
    return word if word in (*PARTS, "ASR") else None


def block(frame: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
    """The rows of one (model, task)."""
    return frame[(frame["model"] == model) & (frame["task"] == task)]


def pick(summary: pd.DataFrame, part: str, split: str, model: str, task: str) -> pd.DataFrame:
    """The summary rows of the first metric of a paper quantity (``FID``, ``ACC``, ``LPIPS``, ``ASR``) on a split.

    Returns:
        The rows of that one (evaluator, metric); empty when the block has none.
    """
    rows = block(summary, model, task)
    rows = rows[(rows["split"] == split) & (rows["metric_display"].map(part_of) == part)]
    if rows.empty:
        return rows
    first = rows.iloc[0]
    return rows[(rows["evaluator"] == first["evaluator"]) & (rows["metric"] == first["metric"])]


def wide(rows: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """Concepts (rows) by methods (columns) of one column of :func:`pick`'s rows."""
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="concept", columns="method", values=value, aggfunc="first", sort=False)


def paper_blocks(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, task) blocks with at least one paper quantity, in order of appearance."""
    hits = summary[summary["metric_display"].map(part_of).isin(PARTS)]
    return list(dict.fromkeys(zip(hits["model"], hits["task"], strict=True)))


def asr_rows(summary: pd.DataFrame, model: str, task: str, evaluator: str | None = None) -> pd.DataFrame:
    """The ``ASR`` rows on the erase split of a block: of one attack evaluator, or of all when ``None``."""
    rows = block(summary, model, task)
    rows = rows[(rows["split"] == "erase") & (rows["metric_display"] == "ASR")]
    return rows if evaluator is None else rows[rows["evaluator"] == evaluator]


def attacks(summary: pd.DataFrame, model: str, task: str) -> list[str]:
    """The evaluators with an ``ASR`` metric on the erase split of a block, in order of appearance."""
    return list(dict.fromkeys(asr_rows(summary, model, task)["evaluator"]))
