"""The paper-layout report outputs: LaTeX tables (Tables 1-3), NudeNet counts and bars (Figure 8), the
trade-off scatter and the self-contained ``index.html``, on small synthetic results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from erasebench.report.cli import report
from erasebench.report.collect import fill_metadata
from erasebench.report.figures import nudenet_bars, tradeoff_scatter
from erasebench.report.html import Html, html_page
from erasebench.report.paper import nudenet_table, paper_cells, paper_table
from erasebench.report.summary import summarize

GOLDEN = Path(__file__).parent / "golden" / "paper_table.tex"
GOLDEN_ROWS = Path(__file__).parent / "golden" / "paper_table_rows.tex"
GOLDEN_I2P = Path(__file__).parent / "golden" / "paper_table_i2p.tex"
# The columns of a run's metrics.csv, as in results/toy/results.csv (less the report's own run_dir).
COLUMNS = [
    "experiment", "model", "task", "concept", "method", "seed", "split", "evaluator", "metric", "value", "n",
    "higher_is_better", "config_hash", "erasebench_version", "git_sha", "model_source", "sampler", "image_seeds",
    "limit", "evaluator_settings", "method_settings", "device", "dtype", "torch", "diffusers", "transformers",
    "duration_s", "finished_at",
]  # fmt: skip
SAMPLER = {"eta": 0.0, "guidance_scale": 7.5, "height": 512, "negative_prompt": "", "scheduler": "ddim",
           "steps": 50, "width": 512}
EVALUATOR_SETTINGS = {"acc": {"backend": "style"}, "acc_i2p": {"backend": "i2p"}, "fid": {"backend": "inception", "dims": 2048},
                      "lpips": {"net": "alex", "backbone_weights": "alexnet_imagenet1k_v1"},
                      "nudenet": {"preset": "advanchor", "threshold": 0.5}}
METHOD_SETTINGS = {"none": {}, "esd": {"lr": 1e-5},
                   "allbutone": {"lr": 1e-3, "reimplementation": "from the paper, no official code"}}
# (concept, method) -> split -> (FID, ACC, LPIPS). Van Gogh: ESD best on every metric of both splits under the
# paper's per-split directions; Picasso: All-but-one. The baseline's preserve FID of 0 must never be bold.
VALUES = {
    ("van_gogh", "none"): {"erase": (0.0, 0.95, 0.0), "preserve": (0.0, 0.90, 0.0)},
    ("van_gogh", "esd"): {"erase": (100.0, 0.10, 0.50), "preserve": (20.0, 0.85, 0.20)},
    ("van_gogh", "allbutone"): {"erase": (80.0, 0.30, 0.40), "preserve": (30.0, 0.80, 0.30)},
    ("picasso", "none"): {"erase": (0.0, 0.90, 0.0), "preserve": (0.0, 0.92, 0.0)},
    ("picasso", "esd"): {"erase": (60.0, 0.40, 0.30), "preserve": (50.0, 0.70, 0.44)},
    ("picasso", "allbutone"): {"erase": (120.0, 0.20, 0.60), "preserve": (10.0, 0.88, 0.16)},
}
SEEDS = {"none": (0,), "esd": (0, 1), "allbutone": (0,)}  # ESD's two seeds straddle its mean by 10%
NUDENET = {"none": (40, 25), "esd": (6, 3), "allbutone": (9, 2)}  # female breast, buttocks


def _row(task: str, concept: str, method: str, seed: int, split: str, evaluator: str, metric: str, value: float,
         higher: bool) -> dict[str, object]:
    return {"experiment": "paper", "model": "sd14", "task": task, "concept": concept, "method": method, "seed": seed,
            "split": split, "evaluator": evaluator, "metric": metric, "value": value,
            "n": 30 if split == "erase" else 48, "higher_is_better": higher, "config_hash": f"h{method}{seed}",
            "erasebench_version": "0.1.0", "git_sha": "abc", "model_source": "sd14", "sampler": json.dumps(SAMPLER),
            "image_seeds": "task-fixed", "limit": None, "evaluator_settings": json.dumps(EVALUATOR_SETTINGS[evaluator]),
            "method_settings": json.dumps(METHOD_SETTINGS[method]), "device": "cuda", "dtype": "float16",
            "torch": "2.4.0", "diffusers": "0.30.0", "transformers": "4.40.0", "duration_s": 1.0,
            "finished_at": "2026-01-01T00:00:00+00:00"}


def long_frame() -> pd.DataFrame:
    """The tidy rows of a style block (FID/ACC/LPIPS), an I2P block (acc_i2p) and a nudity block (NudeNet)."""
    rows = []
    for (concept, method), splits in VALUES.items():
        for i, seed in enumerate(SEEDS[method]):
            factor = 1.0 if len(SEEDS[method]) == 1 else (0.9, 1.1)[i]
            for split, (fid, acc, lpips) in splits.items():
                acc_metric, acc_higher = ("acc_erase", False) if split == "erase" else ("acc_preserve", True)
                for evaluator, metric, value, higher in (("fid", "fid", fid, False), ("acc", acc_metric, acc, acc_higher),
                                                         ("lpips", "lpips", lpips, False)):
                    rows.append(_row("style", concept, method, seed, split, evaluator, metric, value * factor, higher))
    for concept, rates in (("violence", (0.6, 0.2, 0.3)), ("hate", (0.5, 0.1, 0.4))):
        for method, rate in zip(SEEDS, rates, strict=True):
            rows.append(_row("i2p", concept, method, 0, "erase", "acc_i2p", "acc_erase", rate, False))
            rows.append(_row("i2p", concept, method, 0, "erase", "fid", "fid", 0.0 if method == "none" else 50.0, False))
    for method, (breast, buttocks) in NUDENET.items():
        for metric, value in (("count_female_breast_exposed", breast), ("count_buttocks_exposed", buttocks),
                              ("count_total", breast + buttocks), ("nude_rate", breast / 100)):
            rows.append(_row("nudity", "nudity", method, 0, "erase", "nudenet", metric, float(value), False))
    # Rows as a file written before metric metadata existed: the report fills it in from the plugins, per split.
    return fill_metadata(pd.DataFrame(rows, columns=COLUMNS))


@pytest.fixture(scope="module")
def long() -> pd.DataFrame:
    return long_frame()


@pytest.fixture(scope="module")
def summary(long: pd.DataFrame) -> pd.DataFrame:
    return summarize(long)


def assert_valid_latex(tex: str) -> None:
    """Environments nest, braces balance, booktabs rules are there, every tabular row fills the column spec."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} out of order"
    assert not stack, f"unclosed: {stack}"
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    columns = len(re.findall(r"[lcr]", spec))
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    rows = [line for line in body.splitlines() if line.rstrip().endswith(r"\\")]
    assert rows
    for line in rows:
        cells = re.split(r"(?<!\\)&", line.rstrip()[:-2])
        spans = [int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells]
        assert sum(spans) == columns, line


def cells_of(tex: str, row: str) -> list[list[tuple[str, bool]]]:
    """The (number, bold) parts of each cell of the tabular row that starts with ``row``."""
    line = next(x for x in tex.splitlines() if x.startswith(row + " &"))
    out = []
    for cell in re.split(r"(?<!\\)&", line.rstrip()[:-2])[1:]:
        parts = cell.strip().split("/")
        out.append([(re.sub(r"\\(textbf|underline)\{(.*)\}", r"\2", p), p.startswith(r"\textbf")) for p in parts])
    return out


def note_of(tex: str) -> str:
    """The note paragraph under a table."""
    return next(x for x in tex.splitlines() if x.startswith(r"\par\smallskip"))


def test_paper_table_is_valid_latex_with_concepts_avg_and_footnote(summary: pd.DataFrame, long: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style", long=long, layout="advanchor")
    assert_valid_latex(tex)
    assert tex.startswith("% packages: booktabs\n") and r"\resizebox" not in tex and r"\footnotesize" in tex
    assert r"\caption{" in tex and r"\label{tab:sd14-style}" in tex and r"\cmidrule(lr){2-3}" in tex
    lines = tex.splitlines()
    rows = [x.split(" &")[0] for x in lines if x.endswith(r"\\")][2:]
    assert rows == [r"van\_gogh", "picasso", "Avg"]  # concepts in order of appearance, then Avg
    header = next(x for x in lines if r"\multicolumn" in x)
    # Display names from the plugins, the baseline first.
    assert header.index("{None (original)}") < header.index("{ESD}") < header.index("{All-but-one}")
    note = note_of(tex)
    for text in ("Model: sd14", "DDIM, 50 steps, CFG 7.5", "seeds: None (original) 1, ESD 2, All-but-one 1",
                 "images per split: erase 30, preserve 48", "fid (backend inception, 2048 dims)",
                 "lpips (weights alexnet\\_imagenet1k\\_v1)", "All-but-one: reimplementation from the paper"):
        assert text in note, text


def test_bold_follows_the_metric_directions_per_split(summary: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style", layout="advanchor")
    # Columns: none E/P, esd E/P, allbutone E/P; each cell FID/ACC/LPIPS.
    van_gogh, picasso = cells_of(tex, r"van\_gogh"), cells_of(tex, "picasso")
    for col in (0, 1):  # the baseline is never bold, not even its preserve FID of 0
        assert not any(b for _, b in van_gogh[col]) and not any(b for _, b in picasso[col])
    # Van Gogh: ESD wins all six numbers (erase FID higher, ACC lower, LPIPS higher; preserve the reverse).
    # Were the directions the same for both splits, one of the two FID / LPIPS marks would go to All-but-one.
    assert [b for cell in van_gogh[2:4] for _, b in cell] == [True] * 6
    assert [b for cell in van_gogh[4:6] for _, b in cell] == [False] * 6
    assert [b for cell in picasso[2:4] for _, b in cell] == [False] * 6
    assert [b for cell in picasso[4:6] for _, b in cell] == [True] * 6
    assert van_gogh[2] == [("100.00", True), ("10.0", True), ("0.50", True)]  # mean over ESD's two seeds


def test_summary_table_bolds_by_split_direction_never_the_baseline(summary: pd.DataFrame) -> None:
    """Issue 18.1: erase-split FID / KID / LPIPS are higher-is-better; the unmodified baseline is never best."""
    from erasebench.report.tables import cells, to_latex, to_markdown

    text, best, tied = cells(summary[summary["task"] == "style"])
    assert "FID erase ↑" in text.columns and "FID preserve ↓" in text.columns and "LPIPS erase ↑" in text.columns
    assert not best.xs("none", level="method").to_numpy().any()
    assert best.loc[("sd14", "style", "van_gogh", "esd"), "FID erase ↑"]  # 100 > 80
    assert best.loc[("sd14", "style", "picasso", "allbutone"), "FID erase ↑"]  # 120 > 60
    md = to_markdown(text, best, tied)
    assert "| van_gogh | None (original) | 1 | 0.00 | 95.0 |" in md and "**100.00 ± 14.14**" in md
    assert "|---|" in md and "± 0.00" not in md.split("None (original)")[1].split("\n")[0]  # one seed: no "± 0"
    tex = to_latex(text, best, tied, "note")
    assert_valid_latex(tex.split("\n\n")[0] if "\n\n" in tex else tex)
    assert r"\textbf{100.00 $\pm$ 14.14}" in tex and r"$\uparrow$" in tex


def test_runs_console_table_says_higher_for_erase_fid(tmp_path: Path) -> None:
    """Issue 18.1: the per-run table follows the row's per-split direction."""
    from erasebench.evaluators.fid import FID
    from erasebench.evaluators.lpips import LPIPS

    from erasebench.runner import summary_table

    assert FID.metric_info("erase", "fid").higher_is_better is True
    assert FID.metric_info("preserve", "toy_fid").higher_is_better is False
    assert LPIPS.metric_info("erase", "lpips").higher_is_better is True
    rows = fill_metadata(long_frame())
    rows = rows[(rows["method"] == "esd") & (rows["seed"] == 0) & (rows["concept"] == "van_gogh")]
    rows[[c for c in rows.columns if c != "run_dir"]].to_csv(tmp_path / "metrics.csv", index=False)
    table = summary_table(tmp_path / "metrics.csv")
    assert "| erase | fid | fid | 90 | -- | 30 | higher |" in table
    assert "| preserve | fid | fid | 18 | -- | 48 | lower |" in table


def test_avg_row_is_the_mean_over_concepts(summary: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style", layout="advanchor")
    avg = cells_of(tex, "Avg")
    assert [t for t, _ in avg[2]] == ["80.00", "25.0", "0.40"]  # ESD erase: (100+60)/2, (10+40)/2 %, (.5+.3)/2
    assert [t for t, _ in avg[3]] == ["35.00", "77.5", "0.32"]
    assert [t for t, _ in avg[5]] == ["20.00", "84.0", "0.23"]
    # ACC erase ties at 25.0 %: both methods are bold; the other erase numbers go to All-but-one.
    assert [b for _, b in avg[2]] == [False, True, False] and [b for _, b in avg[4]] == [True, True, True]
    cells = paper_cells(summary, "sd14", "style")
    for method in ("esd", "allbutone"):
        for split in ("Erase", "Preserve"):
            fid = [float(cells.loc[c, (method, split)][0][0]) for c in ("van_gogh", "picasso")]
            assert float(cells.loc["Avg", (method, split)][0][0]) == pytest.approx(sum(fid) / 2, abs=0.005)


def test_i2p_classifier_acc_is_the_erase_acc_and_missing_values_print_as_dashes(summary: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "i2p", layout="advanchor")
    assert_valid_latex(tex)
    violence = cells_of(tex, "violence")
    # One column per method: the block has no preserve split and no LPIPS, so neither is printed.
    assert "Concept & Erase & Erase & Erase" in tex and len(violence) == 3
    assert [t for t, _ in violence[1]] == ["50.00", "20.0"]  # FID, share in the category in percent
    assert violence[1][1][1] and not violence[2][1][1]  # the lower rate is bold


def many_methods(long: pd.DataFrame, n: int = 13) -> pd.DataFrame:
    """The style block with ``n - 1`` erasing methods: copies of ESD's rows, each a little worse."""
    style = long[long["task"] == "style"]
    extra = []
    for i in range(n - 3):
        copy = style[style["method"] == "esd"].copy()
        copy["method"] = f"method{i:02d}"
        copy["value"] = copy["value"] * (1 + 0.01 * (i + 1))
        extra.append(copy)
    return pd.concat([style, *extra], ignore_index=True)


def test_auto_layout_puts_methods_in_rows_when_they_do_not_fit(long: pd.DataFrame) -> None:
    """Issue 18.4: 13 methods in the AdvAnchor layout would print at about 2 pt; methods become rows."""
    rows = many_methods(long)
    tex = paper_table(summarize(rows), "sd14", "style", long=rows)
    assert_valid_latex(tex.split(r"\end{table}")[0] + r"\end{table}")
    parts = tex.split(r"\end{table}")[:-1]
    assert len(parts) == 3 and "(part 3 of 3)" in parts[2]  # van_gogh, picasso, Avg: one concept per table
    for part in parts:
        body = [x.split(" &")[0] for x in part.splitlines() if x.endswith(r"\\")]
        assert body[2:5] == ["None (original)", "ESD", "All-but-one"] and len(body) == 2 + 13
    assert r"\multicolumn{2}{c}{van\_gogh}" in parts[0] and r"\multicolumn{2}{c}{Avg}" in parts[2]
    few = paper_table(summarize(long), "sd14", "i2p", long=long)  # two numbers per cell fit the paper layout
    assert "Concept & Erase & Erase & Erase" in few and few == GOLDEN_I2P.read_text(encoding="utf-8")


def test_paper_table_matches_golden_file(summary: pd.DataFrame, long: pd.DataFrame) -> None:
    assert paper_table(summary, "sd14", "style", long=long, layout="advanchor") == GOLDEN.read_text(encoding="utf-8")
    rows = many_methods(long)
    assert paper_table(summarize(rows), "sd14", "style", long=rows) == GOLDEN_ROWS.read_text(encoding="utf-8")


def compile_pdf(tex: str, tmp_path: Path, name: str = "t") -> Path:
    """Compile a table in a plain one-column article (10 pt, no geometry: a 345 pt text width)."""
    packages = re.match(r"% packages: (.*)", tex).group(1)
    doc = f"\\documentclass{{article}}\n\\usepackage{{{packages}}}\n\\begin{{document}}\n{tex}\\end{{document}}\n"
    (tmp_path / f"{name}.tex").write_text(doc)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Overfull \\hbox" not in (tmp_path / f"{name}.log").read_text(errors="replace")
    return tmp_path / f"{name}.pdf"


def smallest_text_pt(pdf: Path) -> float:
    """The height of the smallest word on the pages (pdftotext's bounding boxes are about 0.89 of the font size:
    8 pt text measures 7.08, 7 pt text 6.2; so a bound of 7.0 on it holds the text to about 8 pt)."""
    out = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    heights = [float(b) - float(a) for a, b in re.findall(r'<word [^>]*yMin="([\d.]+)"[^>]*yMax="([\d.]+)"', out)]
    return min(heights)


@pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                    reason="pdflatex / pdftotext are not installed")
def test_golden_tables_compile_and_print_at_7pt_or_more(tmp_path: Path) -> None:
    # The layouts ``auto`` picks (GOLDEN is the AdvAnchor layout forced on a block too wide for it).
    for golden in (GOLDEN_ROWS, GOLDEN_I2P):
        pdf = compile_pdf(golden.read_text(encoding="utf-8"), tmp_path, golden.stem)
        assert smallest_text_pt(pdf) >= 7.0, golden.name


def test_nudenet_table_and_bars(summary: pd.DataFrame, tmp_path: Path) -> None:
    table, tex = nudenet_table(summary, "sd14", "nudity")
    assert list(table.index) == ["none", "esd", "allbutone"]
    assert list(table.columns) == ["female breast (exposed)", "buttocks (exposed)", "Total"]  # display names
    assert table.loc["esd", "Total"] == 9 and table.loc["allbutone", "buttocks (exposed)"] == 2
    assert_valid_latex(tex)
    assert "female breast (exposed)" in tex and r"\textbf{6}" in tex and r"\textbf{40}" not in tex
    png = nudenet_bars(table, tmp_path / "bars.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nudenet_table(summary, "sd14", "style")[0].empty


def test_all_zero_nudenet_bars_start_at_zero(summary: pd.DataFrame, tmp_path: Path) -> None:
    """Issue 18.5: no -0.04..0.04 axis when nothing was detected."""
    import matplotlib.pyplot as plt

    table = nudenet_table(summary, "sd14", "nudity")[0] * 0
    seen = {}
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["ylim"] = fig.axes[0].get_ylim()
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        nudenet_bars(table, tmp_path / "zero.png")
    finally:
        plt.Figure.savefig = original
    assert seen["ylim"][0] == 0 and seen["ylim"][1] > 0


def test_tradeoff_scatter_labels_do_not_overlap(summary: pd.DataFrame, tmp_path: Path) -> None:
    """Issue 18.5: 13 methods close together get labels whose boxes do not intersect."""
    import matplotlib.pyplot as plt

    rows = many_methods(fill_metadata(long_frame()))
    boxes = []
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        boxes.extend(t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts)
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        png = tradeoff_scatter(summarize(rows), tmp_path / "tradeoff.png")
    finally:
        plt.Figure.savefig = original
    assert png is not None and len(boxes) == 13
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps
    nudity_only = summary[summary["task"] == "nudity"]
    assert tradeoff_scatter(nudity_only, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_html_page_is_self_contained(summary: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "grids").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "grids" / "grid_a.png")
    png = nudenet_bars(nudenet_table(summary, "sd14", "nudity")[0], tmp_path / "bars.png")
    page = html_page(tmp_path, "report <test>", [("Tables", [summary.head(3), Html("<p>x</p>"), r"\toprule & <b>"]),
                                                 ("Figures", [png])])
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "index.html"
    assert text.count("data:image/png;base64,") == 2  # the chart and the grid
    assert "&lt;b&gt;" in text and "report &lt;test&gt;" in text  # text is escaped
    srcs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in text and "url(" not in text and "@import" not in text


def write_runs(long: pd.DataFrame, runs: Path, images: bool = True) -> None:
    """Lay the rows out as runs: one metrics.csv per run, a saved config naming the concepts, and two tiny
    images per split (with their prompts in per_image.csv) for the grids."""
    keys = ["experiment", "model", "task", "concept", "method", "seed"]
    for key, rows in long.groupby(keys, sort=False):
        run = runs.joinpath(*map(str, key[:-1]), f"seed={key[-1]}")
        run.mkdir(parents=True)
        rows[[c for c in rows.columns if c != "run_dir"]].to_csv(run / "metrics.csv", index=False)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"task:\n  concepts: {{{key[3]}: {key[3].replace('_', ' ').title()}}}\n")
        if not images:
            continue
        for split in ("erase", "preserve"):
            (run / "images" / split).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(run / "images" / split / f"{i:05d}.png")
        pd.DataFrame([{"split": s, "evaluator": "acc", "metric": f"acc_{s}", "index": i, "value": 1.0,
                       "prompt": f"a {s} prompt {i}", "image_seed": i} for s in ("erase", "preserve") for i in range(2)]
                     ).to_csv(run / "per_image.csv", index=False)


def test_report_writes_every_output(long: pd.DataFrame, tmp_path: Path) -> None:
    write_runs(long, tmp_path / "runs")
    out = tmp_path / "report"
    paths = report(tmp_path / "runs", out)
    names = {p.name for p in paths.values()}
    expected = {"results.csv", "summary.csv", "table.md", "table.tex", "paper_sd14_style.tex", "paper_sd14_i2p.tex",
                "nudenet_sd14_nudity.csv", "nudenet_sd14_nudity.tex", "nudenet_sd14_nudity.png", "tradeoff.png",
                "index.html"}
    assert expected <= names
    assert "paper_sd14_nudity.tex" not in names  # no FID / ACC / LPIPS rows in that block
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0, path
    tex = paths["paper sd14 style"].read_text()
    assert r"\textbf{100.00}/\textbf{10.0}/\textbf{0.50}" in tex
    assert r"\multicolumn{2}{c}{Van Gogh}" in tex  # the concept's name from the run's saved task config
    page = paths["html"].read_text(encoding="utf-8")
    grids = list((out / "grids").glob("*.png"))
    assert grids and page.count("data:image/png;base64,") == len(grids) + 2  # grids, NudeNet bars, scatter
    assert "Van Gogh" in page and r"\toprule" in page and "<b>100.00</b>" in page
    assert pd.read_csv(paths["nudenet sd14 nudity csv"], index_col=0).shape == (3, 3)
    summary_csv = pd.read_csv(paths["summary"])
    for col in ("mean", "std", "seeds", "ci_low", "ci_high", "ci_method", "best", "p_vs_best", "test", "tied"):
        assert col in summary_csv.columns, col


def test_grids_have_a_title_prompt_labels_and_one_method_order(long: pd.DataFrame, tmp_path: Path) -> None:
    """Issue 18.5: rows labelled with their prompts, a title, and the same column order in every grid."""
    from erasebench.report import grids

    labels = []
    original = grids.grid_image

    def spy(columns, row_labels, title, cell=96, pad=4):
        labels.append(([c for c, _ in columns], list(row_labels), title))
        return original(columns, row_labels, title, cell, pad)

    write_runs(long, tmp_path / "runs")
    collected = report.__globals__["collect"](tmp_path / "runs")
    grids.grid_image = spy
    try:
        paths = grids.make_grids(collected, tmp_path / "grids", order=("allbutone", "esd"))
    finally:
        grids.grid_image = original
    assert paths and len(labels) == len(paths)
    for columns, rows, title in labels:
        assert columns[0] == "None (original)"
        assert columns == [c for c in ["None (original)", "All-but-one", "ESD"] if c in columns]
        assert rows[0].startswith("a ") and "(seed 0)" in rows[0]
        assert " split " in title


# -- attack success rates (attack_unlearndiff / attack_ring_a_bell) -----------------------------------------------

ASR_VALUES = {  # (concept, method) -> ASR per seed; ESD's seeds average to 0.6 and 0.2
    ("van_gogh", "none"): (1.0,), ("van_gogh", "esd"): (0.5, 0.7), ("van_gogh", "allbutone"): (0.3,),
    ("picasso", "none"): (1.0,), ("picasso", "esd"): (0.1, 0.3), ("picasso", "allbutone"): (0.5,),
}  # fmt: skip


def with_asr(long: pd.DataFrame, attacks: tuple[str, ...] = ("attack_unlearndiff",)) -> pd.DataFrame:
    """The style block's rows plus pre_asr / asr rows of the given attacks (Ring-A-Bell's: ASR halved)."""
    rows = []
    for attack in attacks:
        settings = {"timesteps": 50, "iterations": 40, "prefix_tokens": 5, "judge": {"kind": "acc", "backend": "style"}}
        if attack == "attack_ring_a_bell":
            settings = {"eta_used": 0.9, "judge": {"kind": "acc", "backend": "style"}}
        for (concept, method), values in ASR_VALUES.items():
            for seed, value in zip(SEEDS[method], values, strict=True):
                for metric, v in (("pre_asr", 0.1), ("asr", value if attack == "attack_unlearndiff" else value / 2)):
                    row = _row("style", concept, method, seed, "erase", "acc", metric, v, False)
                    rows.append({**row, "evaluator": attack, "n": 5, "evaluator_settings": json.dumps(settings)})
    return pd.concat([long, fill_metadata(pd.DataFrame(rows, columns=COLUMNS))], ignore_index=True)


def test_paper_table_adds_an_asr_column_per_method_when_attacks_ran(long: pd.DataFrame, summary: pd.DataFrame) -> None:
    attacked = with_asr(long)
    tex = paper_table(summarize(attacked), "sd14", "style", long=attacked, layout="advanchor")
    assert_valid_latex(tex)
    lines = tex.splitlines()
    assert r"\begin{tabular}{lccccccccc}" in tex
    assert next(x for x in lines if r"\multicolumn" in x).count(r"\multicolumn{3}{c}") == 3
    assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7} \cmidrule(lr){8-10}" in tex
    assert "Concept & " + " & ".join(["Erase", "Preserve", "ASR"] * 3) + r" \\" in tex
    # ASR in percent, lowest bold among the erasing methods (the baseline never), ties both bold.
    asr = {row: [cell for i, cell in enumerate(cells_of(tex, row)) if i % 3 == 2]
           for row in (r"van\_gogh", "picasso", "Avg")}
    assert asr[r"van\_gogh"] == [[("100.0", False)], [("60.0", False)], [("30.0", True)]]
    assert asr["picasso"] == [[("100.0", False)], [("20.0", True)], [("50.0", False)]]
    assert asr["Avg"] == [[("100.0", False)], [("40.0", True)], [("40.0", True)]]
    # The Erase / Preserve cells are those of the table without attacks.
    plain = paper_table(summary, "sd14", "style", long=long, layout="advanchor")
    for row in (r"van\_gogh", "picasso", "Avg"):
        assert [c for i, c in enumerate(cells_of(tex, row)) if i % 3 != 2] == cells_of(plain, row)
    assert r"ASR (\%) $\downarrow$" in tex
    note = note_of(tex)
    assert "images per split: erase 30, preserve 48" in note  # the attack rows' n (prompts) is not an image count
    assert r"attack\_unlearndiff (50 timesteps x 40 iterations, 5 tokens, judge acc style)" in note
    # Blocks without attack results are unchanged, in the same summary.
    assert paper_table(summarize(attacked), "sd14", "i2p") == paper_table(summary, "sd14", "i2p")


def test_paper_table_with_two_attacks_has_one_asr_column_each(long: pd.DataFrame) -> None:
    attacked = with_asr(long, ("attack_unlearndiff", "attack_ring_a_bell"))
    tex = paper_table(summarize(attacked), "sd14", "style", long=attacked, layout="advanchor")
    assert_valid_latex(tex)
    assert "Concept & " + " & ".join(["Erase", "Preserve", "ASR UnlearnDiffAtk", "ASR Ring-A-Bell"] * 3) in tex
    esd = cells_of(tex, "Avg")[4:8]
    assert esd[2] == [("40.0", True)] and esd[3] == [("20.0", True)]  # Ring-A-Bell's ASR is half of it here
    assert r"attack\_ring\_a\_bell (eta 0.9, judge acc style)" in tex
    cells = paper_cells(summarize(attacked), "sd14", "style")
    assert cells.loc["picasso", ("esd", "ASR Ring-A-Bell")] == (("10.0", True, False),)


def test_tradeoff_scatter_adds_an_asr_panel(long: pd.DataFrame, summary: pd.DataFrame, tmp_path: Path) -> None:
    plain = tradeoff_scatter(summary, tmp_path / "plain.png")
    both = tradeoff_scatter(summarize(with_asr(long)), tmp_path / "asr.png")
    assert plain is not None and both is not None
    with Image.open(plain) as a, Image.open(both) as b:
        assert b.width > 1.5 * a.width and b.height == a.height  # a second panel beside the first
