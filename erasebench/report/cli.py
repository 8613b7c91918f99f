"""``erasebench-report <runs dir>``: collect every run's results into tables, figures and one HTML page.

Writes into ``<runs dir>/report/`` (or ``--out``):
    ``results.csv``: every row of every run (the tidy long table);
    ``summary.csv``: per (model, task, concept, method, evaluator, split, metric): mean, std, seeds, 95% interval
    and how it was made, best, the paired test against the best and its p-value;
    ``table.md`` / ``table.tex``: methods as rows, a column per metric and split (:mod:`.tables`);
    ``paper_<model>_<task>.tex``: the AdvAnchor paper's layout, or methods as rows when that does not fit
    (:mod:`.paper`);
    ``nudenet_<model>_<task>.csv`` / ``.tex`` / ``.png``: NudeNet detections per class and method;
    ``tradeoff.png``: erase ACC against preserve ACC per (task, method);
    ``grids/``: image grids; ``unfinished_runs.csv``: runs without results;
    ``index.html``: one self-contained page with all of the above.
Rows that share a key but differ in a setting that changes the number are refused rather than averaged.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
import yaml

from erasebench.errors import ErasebenchError
from erasebench.report import figures, grids, paper, tables
from erasebench.report.collect import Problems, collect, per_image, unfinished
from erasebench.report.html import Html, Section, html_page
from erasebench.report.summary import paper_blocks, summarize
from erasebench.results import atomic_write_text


def sweep_order(runs_dir: Path) -> tuple[str, ...]:
    """The method order of the sweeps saved in ``runs_dir`` (``multirun.yaml``: the experiment's method list,
    then the command line's), baseline handling left to :func:`erasebench.report.summary.method_order`."""
    names: list[str] = []
    for path in sorted(Path(runs_dir).glob("multirun.yaml")):
        try:
            hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
        except (OSError, yaml.YAMLError):
            continue
        names += str((hydra.get("sweeper", {}).get("params") or {}).get("method", "")).split(",")
        for override in hydra.get("overrides", {}).get("task", []) or []:
            if str(override).startswith("method="):
                names += str(override).removeprefix("method=").split(",")
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def _write_tables(summary: pd.DataFrame, out: Path, decimals: int, order: tuple[str, ...]) -> tuple[dict[str, Path], Html]:
    text, best, tied = tables.cells(summary, decimals, order)
    note = tables.note(summary)
    paths = {"summary": out / "summary.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    atomic_write_text(paths["summary"], summary.to_csv(index=False))
    names = paper.concept_names(summary)
    atomic_write_text(paths["markdown"], tables.to_markdown(text, best, tied, names) + "\n" + note + "\n")
    atomic_write_text(paths["latex"], tables.to_latex(text, best, tied, note, names))
    parts = []
    for blk in dict.fromkeys(text.index.droplevel("method")):
        sub = [f.xs(blk, level=[0, 1, 2]) for f in (text, best, tied)]
        parts.append(f"<h3>{' / '.join(map(str, blk))}</h3>" + tables.to_html(*sub))
    return paths, Html("\n".join(parts) + f'<p class="note">{note}</p>')


def _warn_unfinished(missing: pd.DataFrame, problems: Problems, out: Path) -> None:
    """One warning per failed or unreadable run (with its error), one for all queued or running ones."""
    if not len(missing):
        return
    states = ", ".join(f"{n} {s}" for s, n in missing["status"].value_counts().items())
    problems.warn(f"{len(missing)} runs have no results ({states}); all are listed in {out / 'unfinished_runs.csv'} "
                  "and on the HTML page")
    broken = missing["status"].isin(["failed", "unreadable", "unknown"])
    for r in missing[broken].itertuples(index=False):
        problems.warn(f"{r.status}: {r.run_dir}" + (f": {r.error}" if r.error else ""))
    waiting = missing[~broken]
    if len(waiting):
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        problems.warn("not finished (queued, running or killed): " + "; ".join(waiting["run_dir"].head(3)) + more)


def report(runs_dir: Path, out: Path | None = None, decimals: int = 2, grids_too: bool = True, strict: bool = False,
           layout: str = "auto", order: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Collect, summarise and write every output; return the written paths by kind.

    Raises:
        ErasebenchError: No results; rows that differ in settings; with ``strict``, any problem in the input.
    """
    runs_dir = Path(runs_dir)
    out = Path(out) if out else runs_dir / "report"
    problems = Problems(strict=strict)
    df = collect(runs_dir, out, problems)
    images = per_image(df, problems)
    missing = unfinished(runs_dir)
    _warn_unfinished(missing, problems, out)
    problems.check()
    order = sweep_order(runs_dir) if order is None else order
    summary = summarize(df, images)
    paths = {"results": out / "results.csv", "runs": out / "unfinished_runs.csv"}
    atomic_write_text(paths["results"], df.to_csv(index=False))
    atomic_write_text(paths["runs"], missing.to_csv(index=False))
    written, summary_html = _write_tables(summary, out, decimals, order)
    paths.update(written)
    sections: list[Section] = [("Summary", [summary_html])]
    if len(missing):
        sections.append((f"Runs without results ({len(missing)}: failed, queued, running or killed)", [missing]))
    if grids_too:
        for path in grids.make_grids(df, out / "grids", order=order):
            paths[f"grid {path.stem.removeprefix('grid_')}"] = path
    paths.update(_paper_outputs(df, summary, out, sections, layout, order))
    paths["html"] = html_page(out, f"erasebench report: {runs_dir}", sections)
    return paths


def _paper_outputs(df: pd.DataFrame, summary: pd.DataFrame, out: Path, sections: list[Section], layout: str,
                   order: tuple[str, ...]) -> dict[str, Path]:
    """Write the paper tables, NudeNet tables and bars and the trade-off scatter; add their page sections."""
    paths: dict[str, Path] = {}
    blocks = paper_blocks(summary)
    for model, task in dict.fromkeys(zip(summary["model"], summary["task"], strict=True)):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}_{task}")  # names come from configs; keep paths plain
        if (model, task) in blocks:
            tex = paper.paper_table(summary, model, task, long=df, layout=layout, order=order)
            atomic_write_text(path := out / f"paper_{name}.tex", tex)
            paths[f"paper {model} {task}"] = path
            sections.append((f"Paper table: {model} / {task}", [Html(paper.paper_html(summary, model, task, order)),
                                                                  tex]))
        table, tex = paper.nudenet_table(summary, model, task, order=order)
        if len(table):
            atomic_write_text(csv := out / f"nudenet_{name}.csv", table.to_csv())
            atomic_write_text(tex_path := out / f"nudenet_{name}.tex", tex)
            png = figures.nudenet_bars(table, out / f"nudenet_{name}.png", f"NudeNet detections: erase split of {task}")
            paths.update({f"nudenet {model} {task} {p.suffix[1:]}": p for p in (csv, tex_path, png)})
            sections.append((f"NudeNet detections: {model} / {task}", [table, png, tex]))
    if scatter := figures.tradeoff_scatter(summary, out / "tradeoff.png", order):
        paths["tradeoff"] = scatter
        sections.append(("Erase vs preserve ACC", [scatter]))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="erasebench-report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="a results directory, e.g. results/runs/adhoc")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <runs_dir>/report)")
    parser.add_argument("--decimals", type=int, default=2, help="decimals of values that are not percentages")
    parser.add_argument("--no-grids", action="store_true", help="skip the image grids")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) on any problem in the results")
    parser.add_argument("--layout", choices=paper.LAYOUTS, default="auto",
                        help="paper tables: AdvAnchor's (concepts as rows), methods as rows, or whichever fits")
    parser.add_argument("--methods", default=None, help="method order, comma-separated (default: the sweep's)")
    args = parser.parse_args(argv)
    order = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    try:
        paths = report(args.runs_dir, args.out, args.decimals, grids_too=not args.no_grids, strict=args.strict,
                       layout=args.layout, order=order)
    except ErasebenchError as exc:
        print(f"erasebench-report: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
