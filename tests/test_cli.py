"""The command line end to end, in subprocesses: runs, sweeps, reports, resume, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, run_dir_of


def test_single_run_writes_tidy_rows(tmp_path: Path) -> None:
    proc = run_cli(["model=tiny", "method=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = run_dir_of(tmp_path / "runs/adhoc/tiny/smoke/cat/none")
    df = pd.read_csv(run_dir / "metrics.csv")
    assert len(df) == 2 * 2  # (erase, preserve) x (brightness, pixel_std)
    assert set(df["split"]) == {"erase", "preserve"}
    for col in ("config_hash", "sampler", "evaluator_settings", "torch", "diffusers", "model_source", "n"):
        assert df[col].notna().all(), col
    assert (df["n"] == 4).all()
    assert len(list((run_dir / "images/erase").glob("*.png"))) == 4
    assert (run_dir / "erased/meta.json").exists() and (run_dir / ".hydra/config.yaml").exists()
    assert "| erase | dummy | brightness |" in proc.stdout  # the run prints its results
    # Per-image values and the interval they give; a set-level metric says it has none.
    bright = df[df["metric"] == "brightness"].iloc[0]
    assert bright["ci_low"] <= bright["value"] <= bright["ci_high"] and bright["ci_method"].startswith("bootstrap 95%")
    assert df[df["metric"] == "pixel_std"]["ci_method"].str.startswith("no CI").all()
    images = pd.read_csv(run_dir / "per_image.csv")
    erase = images[(images["split"] == "erase") & (images["metric"] == "brightness")]
    assert list(erase["index"]) == [0, 1, 2, 3] and erase["value"].mean() == pytest.approx(bright["value"])
    assert set(df["metric_display"]) == {"brightness", "pixel std"}


def test_saved_sweep_then_report(tmp_path: Path) -> None:
    proc = run_cli(["-m", "experiment=smoke_sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "runs/smoke_sweep"
    assert len(list(sweep.rglob("metrics.csv"))) == 2 * 2
    # The original model's images were generated once for the whole sweep: one cache entry per weight set.
    entries = sorted((tmp_path / "cache/images").iterdir())
    assert len(entries) == 2 and all(len(list(e.glob("*.png"))) == 8 for e in entries)

    rep = run_cli([str(sweep)], tmp_path, module="erasebench.report")
    assert rep.returncode == 0, rep.stderr
    long = pd.read_csv(sweep / "report/results.csv")
    methods, seeds, metric_splits = 2, 2, 4
    assert len(long) == methods * seeds * metric_splits
    assert set(long["method"]) == {"none", "dummy"} and set(long["seed"]) == {0, 1}
    summary = pd.read_csv(sweep / "report/summary.csv")
    assert len(summary) == methods * metric_splits and (summary["seeds"] == seeds).all()
    tex = (sweep / "report/table.tex").read_text()
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    # One erasing method and the baseline, which never competes: nothing to compare, so nothing is bold.
    assert len(body) == methods and "\\textbf{" not in tex and "\\toprule" in tex
    assert "| None (original) | 2 |" in rep.stdout  # the Markdown table is printed
    grids = sorted(p.name for p in (sweep / "report/grids").glob("*.png"))
    assert grids == ["grid_tiny_smoke_cat_erase.png", "grid_tiny_smoke_cat_preserve.png"]


def test_report_refuses_to_merge_different_settings(tmp_path: Path) -> None:
    assert run_cli(["experiment_name=a", "limit=2"], tmp_path).returncode == 0
    assert run_cli(["experiment_name=b"], tmp_path).returncode == 0
    rep = run_cli([str(tmp_path / "runs")], tmp_path, module="erasebench.report")
    assert rep.returncode == 2 and "differ in 'limit'" in rep.stderr


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "erasebench.cli", "-m", "model=tiny", "task=smoke", "method=dummy", "method.sleep_s=2",
            "seed=0,1,2",
            f"paths.results_dir={tmp_path / 'runs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "runs").rglob("metrics.csv")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.csv")}
    assert 1 <= len(done) < 3, "the sweep should have been killed part-way"

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "runs").rglob("metrics.csv"))) == 3
    assert all(p.stat().st_mtime_ns == m for p, m in done.items())  # finished runs untouched
    assert again.stderr.count("skip:") + again.stdout.count("skip:") == len(done)


BAD_INPUT = {
    "unknown_method": (["method=esdd"], "Unknown method 'esdd'"),
    "misspelled_method": (["-m", "method=none,dumy"], "Did you mean 'dummy'"),
    "unknown_method_key": (["method=dummy", "+method.scalee=1"], "Unknown setting 'scalee' of method 'dummy'"),
    "bad_method_value": (["method=dummy", "method.scale=abc"], "setting 'scale' of method 'dummy'"),
    "unknown_task": (["task=nope"], "Unknown task 'nope'"),
    "unknown_concept": (["concept=cow"], "Unknown concept 'cow'"),
    "missing_prompt_file": (["+task.splits.erase.prompt_file=missing.csv"], "Prompt file 'missing.csv' not found"),
    "missing_weights_offline": (["model=sd14"], "huggingface-cli download CompVis/stable-diffusion-v1-4"),
    "bad_seed": (["seed=abc"], "seed='abc': the seed must be a non-negative integer"),
    "bad_device": (["device=cudaa"], "device='cudaa': valid devices are auto"),
    "nan_setting": (["method=dummy", "method.scale=nan"], "setting 'scale': nan; it must be a finite number"),
    "bad_limit": (["limit=2.5"], "limit=2.5: limit must be a positive integer"),
    "setting_the_method_lacks": (["method=none", "method.scale=2"], "The method has no setting 'scale'"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_paragraph_and_nonzero(case: str, tmp_path: Path) -> None:
    args, expected = BAD_INPUT[case]
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(args, tmp_path, env=env)
    assert proc.returncode == 2
    assert "erasebench: error:" in proc.stderr and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "missing_weights_offline":
        assert str(tmp_path / "hf") in proc.stderr  # names the cache it looked in
        [status] = (tmp_path / "runs").rglob("status.json")  # found when the model loads: the run says so
        assert '"failed"' in status.read_text()
    else:
        assert not (tmp_path / "runs").exists()  # refused before Hydra made a run directory or a model loaded
    assert not list((tmp_path / "runs").rglob("metrics.csv"))
