"""``erasebench-report <runs dir>``: collect every run's ``metrics.csv`` into tables.

Writes into ``<runs dir>/report/`` (or ``--out``):
    ``results.csv``: every row of every run (the tidy long table);
    ``summary.csv``: mean, std and seed count per (model, task, concept, method, evaluator, split, metric);
    ``table.md`` / ``table.tex``: methods as rows, ``evaluator/split/metric`` as columns, mean ± std over
    seeds, the best value of each column in bold (by ``higher_is_better``); LaTeX via pandas'
    ``Styler.to_latex`` with booktabs rules;
    ``paper_<model>_<task>.tex``: the AdvAnchor paper's table layout (concepts x methods, "FID/ACC/LPIPS" per
    split, an Avg row; :mod:`erasebench.paper`), for each (model, task) with FID, ACC or LPIPS rows;
    ``nudenet_<model>_<task>.csv`` / ``.tex`` / ``.png``: NudeNet detections per class and method (the
    paper's Figure 8), where ``count_*`` rows exist;
    ``tradeoff.png``: erase ACC against preserve ACC per (task, method), where ACC rows exist;
    ``grids/``: image grids (:mod:`erasebench.grids`);
    ``index.html``: one self-contained page with all of the above (:mod:`erasebench.figures`).
Rows that share a key but differ in a setting that changes the number (sampler, evaluator settings,
image limit, ...) are refused rather than averaged together.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from erasebench.errors import CorruptFileError, ErasebenchError
from erasebench.results import KEY, SETTINGS, atomic_write_text, read_metrics

if TYPE_CHECKING:
    from erasebench.figures import Html, Section

GROUP = ["model", "task", "concept", "method", "evaluator", "split", "metric"]
BLOCK = ["model", "task", "concept"]  # methods are compared within a block


def unfinished(runs_dir: Path) -> pd.DataFrame:
    """Runs under ``runs_dir`` without valid results: failed, queued, running or killed, or unreadable.

    A run directory is one with ``status.json`` (every run since status files exist has one); its results
    count only through a ``metrics.csv`` that :func:`erasebench.results.read_metrics` accepts.
    """
    from erasebench.status import read_status

    rows = []
    for status_file in sorted(Path(runs_dir).rglob("status.json")):
        run_dir, record = status_file.parent, read_status(status_file.parent)
        metrics = run_dir / "metrics.csv"
        if metrics.exists():
            try:
                read_metrics(metrics)
                continue
            except CorruptFileError as exc:
                record = {"status": "unreadable", "error": str(exc)}
        state = record.get("status", "unknown")
        if state == "running":
            state = "running or killed"  # a killed job cannot update its status
        rows.append({"run_dir": str(run_dir), "status": state, "error": record.get("error", ""),
                     "traceback": record.get("traceback", ""), "at": record.get("at", "")})
    return pd.DataFrame(rows, columns=["run_dir", "status", "error", "traceback", "at"])


def _readable(files: list[Path]) -> list[pd.DataFrame]:
    frames = []
    for f in files:
        try:
            frames.append(read_metrics(f).assign(run_dir=str(f.parent)))
        except CorruptFileError as exc:  # listed by unfinished(); never averaged in
            print(f"erasebench-report: warning: left out: {exc}", file=sys.stderr)
    return frames


def collect(runs_dir: Path) -> pd.DataFrame:
    """Read every valid ``metrics.csv`` under ``runs_dir`` into one frame, the latest row per key.

    Raises:
        ErasebenchError: No results, or rows that would be merged across different settings.
    """
    files = sorted(p for p in Path(runs_dir).rglob("metrics.csv") if "report" not in p.parts)
    frames = _readable(files)
    if not frames:
        missing = unfinished(Path(runs_dir))
        runs = "; ".join(f"{r.status}: {r.run_dir}" + (f" ({r.error})" if r.error else "")
                         for r in missing.head(5).itertuples(index=False))
        hint = f" {len(missing)} runs there have no results: {runs}." if len(missing) else ""
        raise ErasebenchError(f"No readable metrics.csv under '{runs_dir}'.{hint} Run `erasebench` first "
                              "(see README).")
    df = pd.concat(frames, ignore_index=True)
    # A rerun with the same settings replaces its older rows; rows that differ in a setting both stay, and the
    # check below refuses them rather than keeping one silently.
    df = df.sort_values("finished_at").drop_duplicates(KEY + SETTINGS, keep="last").reset_index(drop=True)
    # Method settings differ between methods by design; every other setting must agree within a column.
    for key, group in df.groupby(["model", "task", "concept", "evaluator", "metric"]):
        for col in (c for c in SETTINGS if c != "method_settings"):
            values = group[col].map(str).unique()
            if len(values) > 1:
                raise ErasebenchError(
                    f"Results for {dict(zip(['model', 'task', 'concept', 'evaluator', 'metric'], key))} differ in "
                    f"'{col}' ({' vs '.join(values[:3])}); report them from separate directories."
                )
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1; 0 for one seed) and seed count per method and metric."""
    out = df.groupby(GROUP, sort=False).agg(mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"),
                                            higher_is_better=("higher_is_better", "first"))
    return out.fillna({"std": 0.0}).reset_index()


def _ordered_methods(methods: pd.Series) -> list[str]:
    names = list(dict.fromkeys(methods))
    return sorted(names, key=lambda m: (m != "none", names.index(m)))  # the baseline first


def pivot(summary: pd.DataFrame, decimals: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide tables of cell text ("mean ± std") and of booleans marking the best cell of each column."""
    arrow = summary["higher_is_better"].astype(str).str.lower().map({"true": " ↑", "false": " ↓"}).fillna("")
    s = summary.assign(column=summary["evaluator"] + "/" + summary["split"] + "/" + summary["metric"] + arrow)
    s["text"] = s["mean"].map(f"{{:.{decimals}f}}".format) + " ± " + s["std"].map(f"{{:.{decimals}f}}".format)
    index = [*BLOCK, "method"]
    text = s.pivot(index=index, columns="column", values="text")
    means = s.pivot(index=index, columns="column", values="mean")
    hib = s.drop_duplicates("column").set_index("column")["higher_is_better"].astype(str).str.lower() == "true"
    order = [(*b, m) for b in dict.fromkeys(map(tuple, s[BLOCK].values)) for m in _ordered_methods(s["method"])
             if (*b, m) in text.index]
    # A block without some column (e.g. no preserve split) has no cell there; "--" rather than NaN in the tables.
    text, means = text.loc[order].fillna("--"), means.loc[order]
    best = pd.DataFrame(False, index=means.index, columns=means.columns)
    for _, block in means.groupby(level=BLOCK, sort=False):
        for col in means.columns:
            values = block[col].dropna()
            if len(values) > 1:
                target = values.max() if hib[col] else values.min()
                best.loc[values.index[values == target], col] = True
    seeds = s.groupby(index)["seeds"].max().loc[order]
    text.insert(0, "seeds", seeds.astype(str))
    best.insert(0, "seeds", False)
    text.columns.name = best.columns.name = None
    return text, best


def to_markdown(text: pd.DataFrame, best: pd.DataFrame) -> str:
    """A GitHub Markdown table, best cells in bold."""
    cells = text.where(~best, "**" + text + "**").reset_index()
    header = "| " + " | ".join(map(str, cells.columns)) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    rows = ["| " + " | ".join(map(str, r)) + " |" for r in cells.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def to_latex(text: pd.DataFrame, best: pd.DataFrame) -> str:
    """A booktabs LaTeX table (pandas ``Styler.to_latex``), best cells in bold."""
    def escape(s: str) -> str:
        return s.replace("_", r"\_").replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")

    styled = text.rename(columns=escape).style.format(escape).format_index(escape, axis=0)
    styled = styled.apply(lambda _: best.rename(columns=escape).map(lambda b: "textbf:--rwrap;" if b else ""),
                          axis=None)
    return styled.to_latex(hrules=True, multirow_align="t")


def report(runs_dir: Path, out: Path | None = None, decimals: int = 3, grids: bool = True) -> dict[str, Path]:
    """Collect, summarise and write every table (and image grids); return the written paths by kind."""
    from erasebench.figures import table_html
    from erasebench.grids import make_grids

    out = Path(out) if out else Path(runs_dir) / "report"
    df = collect(Path(runs_dir))
    summary = summarize(df)
    text, best = pivot(summary, decimals)
    paths = {"results": out / "results.csv", "summary": out / "summary.csv", "markdown": out / "table.md",
             "latex": out / "table.tex"}
    atomic_write_text(paths["results"], df.to_csv(index=False))
    atomic_write_text(paths["summary"], summary.to_csv(index=False))
    atomic_write_text(paths["markdown"], to_markdown(text, best))
    atomic_write_text(paths["latex"], to_latex(text, best))
    missing = unfinished(Path(runs_dir))
    paths["runs"] = out / "unfinished_runs.csv"
    atomic_write_text(paths["runs"], missing.to_csv(index=False))
    if len(missing):
        print(f"erasebench-report: warning: {len(missing)} runs have no results (see {paths['runs']}):", file=sys.stderr)
        for r in missing.itertuples(index=False):
            print(f"  {r.status}: {r.run_dir}" + (f": {r.error}" if r.error else ""), file=sys.stderr)
    if grids:
        for path in make_grids(df, out / "grids"):
            paths[f"grid {path.stem.removeprefix('grid_')}"] = path
    paths.update(paper_outputs(df, summary, out, table_html(text, best), missing))
    return paths


def paper_outputs(df: pd.DataFrame, summary: pd.DataFrame, out: Path, summary_html: Html,
                  missing: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write the paper tables, NudeNet tables and bars, the trade-off scatter and ``index.html``."""
    # Imported here: both modules import this one (and matplotlib is slow to import for the CLI's --help).
    from erasebench.figures import Html, html_page, nudenet_bars, tradeoff_scatter
    from erasebench.paper import nudenet_table, paper_blocks, paper_html, paper_table

    paths: dict[str, Path] = {}
    sections: list[Section] = [("Summary (mean ± std over seeds)", [summary_html])]
    for model, task in dict.fromkeys(zip(summary["model"], summary["task"], strict=True)):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}_{task}")  # names come from configs; keep paths plain
        if (model, task) in paper_blocks(summary):
            tex = paper_table(summary, model, task, long=df)
            atomic_write_text(path := out / f"paper_{name}.tex", tex)
            paths[f"paper {model} {task}"] = path
            sections.append((f"Paper table: {model} / {task}", [Html(paper_html(summary, model, task)), tex]))
        table, tex = nudenet_table(summary, model, task)
        if len(table):
            atomic_write_text(csv := out / f"nudenet_{name}.csv", table.to_csv())
            atomic_write_text(tex_path := out / f"nudenet_{name}.tex", tex)
            png = nudenet_bars(table, out / f"nudenet_{name}.png")
            paths.update({f"nudenet {model} {task} {p.suffix[1:]}": p for p in (csv, tex_path, png)})
            sections.append((f"NudeNet detections: {model} / {task}", [table, png, tex]))
    if scatter := tradeoff_scatter(summary, out / "tradeoff.png"):
        paths["tradeoff"] = scatter
        sections.append(("Erase vs preserve ACC", [scatter]))
    if missing is not None and len(missing):
        sections.insert(1, (f"Runs without results ({len(missing)}: failed, queued, running or killed)", [missing]))
    paths["html"] = html_page(out, f"erasebench report: {out}", sections)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="erasebench-report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="a results directory, e.g. results/runs/adhoc")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <runs_dir>/report)")
    parser.add_argument("--decimals", type=int, default=3)
    parser.add_argument("--no-grids", action="store_true", help="skip the image grids")
    args = parser.parse_args(argv)
    try:
        paths = report(args.runs_dir, args.out, args.decimals, grids=not args.no_grids)
    except ErasebenchError as exc:
        print(f"erasebench-report: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
