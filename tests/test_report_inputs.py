"""What the report does with imperfect input (issue 18.2, 18.8), its paired tests on per-image values, and the
report package's one-way import graph (18.6)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_report_paper import long_frame, write_runs

from erasebench.report.cli import main
from erasebench.report.collect import collect
from erasebench.report.summary import summarize

REPORT = Path(__file__).parent.parent / "erasebench" / "report"


def esd_runs(runs: Path, seeds: int = 5) -> list[Path]:
    """ESD's Van Gogh rows for ``seeds`` seeds (values shifted per seed), plus the baseline, as run directories."""
    base = long_frame()
    base = base[(base["task"] == "style") & (base["concept"] == "van_gogh")]
    esd = base[(base["method"] == "esd") & (base["seed"] == 0)]
    frames = [base[base["method"] == "none"]]
    for seed in range(seeds):
        frames.append(esd.assign(seed=seed, value=esd["value"] + seed, config_hash=f"h{seed}"))
    write_runs(pd.concat(frames, ignore_index=True), runs, images=False)
    return sorted(runs.rglob("esd/seed=*"))


def test_bad_files_are_left_out_with_a_warning_each_and_seeds_counted_per_cell(tmp_path: Path, capsys) -> None:
    runs = esd_runs(tmp_path / "runs")
    cut, nan, no_value = (r / "metrics.csv" for r in runs[1:4])
    cut.write_text(cut.read_text()[:-40])  # a killed writer: cut mid-row
    frame = pd.read_csv(nan)
    frame.loc[(frame["split"] == "preserve") & (frame["metric"] == "fid"), "value"] = float("nan")
    frame.to_csv(nan, index=False)
    pd.read_csv(no_value).drop(columns="value").to_csv(no_value, index=False)
    main([str(tmp_path / "runs"), "--no-grids"])  # exits 0: the good rows are reported
    err = capsys.readouterr().err
    assert str(cut) in err and "ends mid-row" in err
    assert str(no_value) in err and "value" in err
    assert f"fid/preserve/fid = nan of the run '{nan.parent}'" in err
    summary = pd.read_csv(tmp_path / "runs" / "report" / "summary.csv")
    esd = summary[summary["method"] == "esd"].set_index(["split", "metric"])
    assert esd.loc[("preserve", "fid"), "seeds"] == 2  # seeds 0 and 4: seed 2's value is NaN
    assert esd.loc[("erase", "fid"), "seeds"] == 3  # seeds 0, 2 and 4
    assert esd.loc[("erase", "fid"), "mean"] == pytest.approx(90 + 2)  # (90 + 92 + 94) / 3
    table = (tmp_path / "runs" / "report" / "table.md").read_text()
    assert "| ESD | 3 |" in table  # the row's seed count is the largest of its cells, not the number of files


def test_strict_turns_every_warning_into_exit_2_naming_the_files(tmp_path: Path, capsys) -> None:
    runs = esd_runs(tmp_path / "runs", seeds=2)
    (runs[1] / "metrics.csv").write_text("experiment,model\n")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "runs"), "--no-grids", "--strict"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--strict" in err and str(runs[1] / "metrics.csv") in err
    assert not (tmp_path / "runs" / "report" / "summary.csv").exists()  # nothing half-written


def test_unreadable_files_name_the_file_without_a_traceback(tmp_path: Path) -> None:
    runs = esd_runs(tmp_path / "runs", seeds=2)
    (runs[0] / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    frame = pd.read_csv(runs[1] / "metrics.csv")
    frame["seed"] = "one"
    frame.to_csv(runs[1] / "metrics.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "erasebench.report", str(tmp_path / "runs"), "--no-grids"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{runs[0] / 'metrics.csv'}" in proc.stderr and "UTF-8" in proc.stderr
    assert f"{runs[1] / 'metrics.csv'}" in proc.stderr and "'seed' holds 'one'" in proc.stderr


def test_results_under_a_folder_named_report_are_found(tmp_path: Path) -> None:
    """Issue 18.8: only the report's own output folder is skipped."""
    runs = tmp_path / "report" / "runs"
    esd_runs(runs, seeds=2)
    df = collect(runs, out=runs / "report")
    assert set(df["method"]) == {"none", "esd"}
    main([str(runs), "--no-grids"])
    (runs / "report" / "stray").mkdir()
    (runs / "report" / "stray" / "metrics.csv").write_text((next(runs.rglob("esd/seed=0")) / "metrics.csv").read_text())
    again = collect(runs, out=runs / "report")
    assert len(again) == len(df)  # the report folder's own files are never read as results


def per_image_runs(runs: Path, esd_hits: list[int], abo_hits: list[int]) -> None:
    """Two methods (plus the baseline) with the given per-image erase-ACC outcomes on the same 20 prompts."""
    base = long_frame()
    base = base[(base["task"] == "style") & (base["concept"] == "van_gogh") & (base["seed"] == 0)]
    base = base[base["metric"] == "acc_erase"]
    frames = []
    for method, hits in (("none", [1] * 20), ("esd", esd_hits), ("allbutone", abo_hits)):
        rows = base[base["method"] == "esd"].assign(method=method, value=sum(hits) / 20, n=20,
                                                      config_hash=f"h{method}")
        frames.append(rows)
    write_runs(pd.concat(frames, ignore_index=True), runs, images=False)
    for method, hits in (("none", [1] * 20), ("esd", esd_hits), ("allbutone", abo_hits)):
        run = next(runs.rglob(f"{method}/seed=0"))
        pd.DataFrame({"split": "erase", "evaluator": "acc", "metric": "acc_erase", "index": range(20), "value": hits,
                      "prompt": [f"p{i}" for i in range(20)], "image_seed": range(20)}).to_csv(run / "per_image.csv",
                                                                                               index=False)


def test_paired_test_marks_methods_not_significantly_worse_than_the_best(tmp_path: Path) -> None:
    from scipy.stats import binomtest

    esd = [0] * 18 + [1] * 2  # ACC 10%: the best (lower is better on the erase split)
    close = [0] * 16 + [1] * 4  # 20%: 2 discordant pairs, p = 0.5
    per_image_runs(tmp_path / "a", esd, close)
    main([str(tmp_path / "a"), "--no-grids"])
    s = pd.read_csv(tmp_path / "a" / "report" / "summary.csv").set_index("method")
    assert bool(s.loc["esd", "best"]) and not bool(s.loc["allbutone", "best"])
    assert s.loc["allbutone", "test"] == "exact McNemar"
    assert s.loc["allbutone", "p_vs_best"] == pytest.approx(binomtest(0, 2, 0.5).pvalue)
    assert bool(s.loc["allbutone", "tied"])
    assert "| All-but-one | 1 | <ins>20.0</ins> |" in (tmp_path / "a" / "report" / "table.md").read_text()
    far = [1] * 12 + [0] * 8  # 60%: 14 discordant pairs, 12 of them against All-but-one
    per_image_runs(tmp_path / "b", esd, far)
    main([str(tmp_path / "b"), "--no-grids"])
    s = pd.read_csv(tmp_path / "b" / "report" / "summary.csv").set_index("method")
    assert s.loc["allbutone", "p_vs_best"] == pytest.approx(binomtest(2, 14, 0.5).pvalue)
    assert not bool(s.loc["allbutone", "tied"])
    # These rows are in the format of files written before intervals existed, and say so.
    assert s.loc["esd", "ci_method"] == "no CI (written before intervals existed)" and pd.isna(s.loc["esd", "ci_low"])


def test_multi_seed_interval_is_a_t_interval_over_seeds(tmp_path: Path) -> None:
    from scipy import stats as sps

    esd_runs(tmp_path / "runs", seeds=3)
    df = collect(tmp_path / "runs")
    s = summarize(df).set_index(["method", "split", "metric"]).loc[("esd", "erase", "fid")]
    values = [90.0, 91.0, 92.0]
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(
        sps.t.interval(0.95, 2, loc=91.0, scale=sps.sem(values)))
    assert s["ci_method"] == "t 95% over 3 seeds" and s["std"] == pytest.approx(1.0)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_report_modules_form_a_one_way_graph() -> None:
    modules = {p.stem: p for p in REPORT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {m: {n.split(".")[2] for n in _imports(p) if n.startswith("erasebench.report.") and n.split(".")[2] in modules}
             for m, p in modules.items()}
    assert not _imports(REPORT / "__init__.py")  # importing a submodule runs __init__: it must import nothing

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, graph
    assert graph["cli"] >= {"collect", "summary", "tables", "paper", "figures", "grids", "html"}
    # Plugin facts come from the plugins: no report module names a particular method or evaluator.
    for m, p in modules.items():
        text = p.read_text()
        for fact in ("allbutone", "toy_fid", "attack_unlearndiff", "REIMPLEMENTED"):
            assert fact not in text, (m, fact)


@pytest.mark.parametrize("module", sorted(p.stem for p in REPORT.glob("*.py") if p.stem != "__main__"))
def test_each_report_module_imports_on_its_own(module: str) -> None:
    name = "erasebench.report" if module == "__init__" else f"erasebench.report.{module}"
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_method_swept_over_a_setting_is_one_row_per_value_but_task_presets_are_not_variants() -> None:
    from erasebench.report.collect import split_variants

    rows = long_frame()
    rows = rows[rows["method"] == "esd"].copy()
    style = rows["task"] == "style"
    rows.loc[~style, "method_settings"] = '{"lr": 2e-05}'  # another task's preset: the same method there
    rows.loc[style & (rows["seed"] == 1), "method_settings"] = '{"lr": 3e-05}'  # a sweep within the block
    out = split_variants(rows)
    assert set(out[~style]["method"]) == {"esd"}
    assert set(out[style]["method"]) == {"esd (lr=1e-05)", "esd (lr=3e-05)"}
    s = summarize(out)
    assert set(s[s["task"] == "style"]["seeds"]) == {1}  # never averaged across the two values
