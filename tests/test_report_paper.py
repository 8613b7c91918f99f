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

from erasebench.figures import Html, html_page, nudenet_bars, tradeoff_scatter
from erasebench.paper import nudenet_table, paper_cells, paper_table
from erasebench.report import report, summarize

GOLDEN = Path(__file__).parent / "golden" / "paper_table.tex"
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
    return pd.DataFrame(rows, columns=COLUMNS)


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
        out.append([(re.sub(r"\\textbf\{(.*)\}", r"\1", p), p.startswith(r"\textbf")) for p in parts])
    return out


def test_paper_table_is_valid_latex_with_concepts_avg_and_footnote(summary: pd.DataFrame, long: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style", long=long)
    assert_valid_latex(tex)
    assert r"\caption{" in tex and r"\cmidrule(lr){2-3}" in tex
    lines = tex.splitlines()
    rows = [x.split(" &")[0] for x in lines if x.endswith(r"\\")][2:]
    assert rows == [r"van\_gogh", "picasso", "Avg"]  # concepts in order of appearance, then Avg
    header = next(x for x in lines if r"\multicolumn" in x)
    assert header.index("{none}") < header.index("{esd}") < header.index("{allbutone}")  # baseline first
    note = next(x for x in lines if x.startswith(r"\par\footnotesize"))
    for text in ("Model: sd14", "DDIM, 50 steps, CFG 7.5", "seeds: none 1, esd 2, allbutone 1", "images per split: erase 30, preserve 48",
                 "fid (backend inception", "lpips (net alex", "allbutone: reimplementation from the paper"):
        assert text in note, text


def test_bold_follows_the_paper_directions_per_split(summary: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style")
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


def test_avg_row_is_the_mean_over_concepts(summary: pd.DataFrame) -> None:
    tex = paper_table(summary, "sd14", "style")
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
    tex = paper_table(summary, "sd14", "i2p")
    assert_valid_latex(tex)
    violence = cells_of(tex, "violence")
    assert [t for t, _ in violence[2]] == ["50.00", "20.0", "--"]  # FID, share in the category in percent, no LPIPS
    assert [t for t, _ in violence[3]] == ["--", "--", "--"]  # no preserve split
    assert violence[2][1][1] and not violence[4][1][1]  # the lower rate is bold
    assert "I2P harm category" in tex


def test_paper_table_matches_golden_file(summary: pd.DataFrame, long: pd.DataFrame) -> None:
    assert paper_table(summary, "sd14", "style", long=long) == GOLDEN.read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_golden_table_compiles(tmp_path: Path) -> None:
    doc = ("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
           + GOLDEN.read_text(encoding="utf-8") + "\\end{document}\n")
    (tmp_path / "t.tex").write_text(doc)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_nudenet_table_and_bars(summary: pd.DataFrame, tmp_path: Path) -> None:
    table, tex = nudenet_table(summary, "sd14", "nudity")
    assert list(table.index) == ["none", "esd", "allbutone"]
    assert list(table.columns) == ["female_breast_exposed", "buttocks_exposed", "total"]
    assert table.loc["esd", "total"] == 9 and table.loc["allbutone", "buttocks_exposed"] == 2
    assert_valid_latex(tex)
    assert r"female\_breast\_exposed" in tex and r"\textbf{6}" in tex and r"\textbf{40}" not in tex
    png = nudenet_bars(table, tmp_path / "bars.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nudenet_table(summary, "sd14", "style")[0].empty


def test_tradeoff_scatter(summary: pd.DataFrame, tmp_path: Path) -> None:
    png = tradeoff_scatter(summary, tmp_path / "tradeoff.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
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


def write_runs(long: pd.DataFrame, runs: Path) -> None:
    """Lay the rows out as runs: one metrics.csv per run, with two tiny images per split for the grids."""
    keys = ["experiment", "model", "task", "concept", "method", "seed"]
    for key, rows in long.groupby(keys, sort=False):
        run = runs.joinpath(*map(str, key[:-1]), f"seed={key[-1]}")
        run.mkdir(parents=True)
        rows.to_csv(run / "metrics.csv", index=False)
        for split in ("erase", "preserve"):
            (run / "images" / split).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(run / "images" / split / f"{i:05d}.png")


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
    # The collected rows come in run-directory order (so allbutone before esd); the table follows them.
    collected = pd.read_csv(paths["results"], keep_default_na=False, na_values=[""])
    tex = paths["paper sd14 style"].read_text()
    assert tex == paper_table(summarize(collected), "sd14", "style", long=collected)
    assert r"\textbf{100.00}/\textbf{10.0}/\textbf{0.50}" in tex
    page = paths["html"].read_text(encoding="utf-8")
    grids = list((out / "grids").glob("*.png"))
    assert grids and page.count("data:image/png;base64,") == len(grids) + 2  # grids, NudeNet bars, scatter
    assert "van_gogh" in page and r"\toprule" in page and "<b>100.00</b>" in page
    assert pd.read_csv(paths["nudenet sd14 nudity csv"], index_col=0).shape == (3, 3)


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
    return pd.concat([long, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)


def test_paper_table_adds_an_asr_column_per_method_when_attacks_ran(long: pd.DataFrame, summary: pd.DataFrame) -> None:
    attacked = with_asr(long)
    tex = paper_table(summarize(attacked), "sd14", "style", long=attacked)
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
    plain = paper_table(summary, "sd14", "style", long=long)
    for row in (r"van\_gogh", "picasso", "Avg"):
        assert [c for i, c in enumerate(cells_of(tex, row)) if i % 3 != 2] == cells_of(plain, row)
    assert r"ASR (\%) $\downarrow$" in tex and "(UnlearnDiffAtk)" in tex
    note = next(x for x in lines if x.startswith(r"\par\footnotesize"))
    assert "images per split: erase 30, preserve 48" in note  # the attack rows' n (prompts) is not an image count
    assert "ASR: UnlearnDiffAtk (5 prompts, 50 timesteps x 40 iterations, 5 tokens, judge acc style)" in note
    # Blocks without attack results are unchanged, in the same summary.
    assert paper_table(summarize(attacked), "sd14", "i2p") == paper_table(summary, "sd14", "i2p")


def test_paper_table_with_two_attacks_has_one_asr_column_each(long: pd.DataFrame) -> None:
    attacked = with_asr(long, ("attack_unlearndiff", "attack_ring_a_bell"))
    tex = paper_table(summarize(attacked), "sd14", "style", long=attacked)
    assert_valid_latex(tex)
    assert "Concept & " + " & ".join(["Erase", "Preserve", "ASR UnlearnDiffAtk", "ASR Ring-A-Bell"] * 3) in tex
    esd = cells_of(tex, "Avg")[4:8]
    assert esd[2] == [("40.0", True)] and esd[3] == [("20.0", True)]  # Ring-A-Bell's ASR is half of it here
    assert "ASR: Ring-A-Bell (5 prompts, eta 0.9, judge acc style)" in tex
    cells = paper_cells(summarize(attacked), "sd14", "style")
    assert cells.loc["picasso", ("esd", "ASR Ring-A-Bell")] == (("10.0", True),)


def test_tradeoff_scatter_adds_an_asr_panel(long: pd.DataFrame, summary: pd.DataFrame, tmp_path: Path) -> None:
    plain = tradeoff_scatter(summary, tmp_path / "plain.png")
    both = tradeoff_scatter(summarize(with_asr(long)), tmp_path / "asr.png")
    assert plain is not None and both is not None
    with Image.open(plain) as a, Image.open(both) as b:
        assert b.width > 1.5 * a.width and b.height == a.height  # a second panel beside the first
    two = tradeoff_scatter(summarize(with_asr(long, ("attack_unlearndiff", "attack_ring_a_bell"))), tmp_path / "2.png")
    assert two is not None and two.read_bytes()[:4] == b"\x89PNG"
