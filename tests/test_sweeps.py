"""Sweeps that never lose, mix or silently drop a result: run identity, scoped settings, whole-sweep checks,
per-job isolation, the per-run lock and the thread count, each through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_cli

ONE = ["limit=1"]  # one image per split: these tests are about bookkeeping, not numbers


def _metrics(root: Path) -> list[Path]:
    return sorted(root.rglob("metrics.csv"))


def test_a_sweep_over_a_setting_keeps_every_job_and_a_rerun_skips_them(tmp_path: Path) -> None:
    # none does not have `scale`: scoped to dummy, it sweeps dummy's setting only (none runs once, then skips).
    args = ["-m", "method=none,dummy", "methods.dummy.scale=0.5,0.3", *ONE]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    files = _metrics(tmp_path / "runs")
    assert len(files) == 3, files  # none, dummy at 0.5, dummy at 0.3: no job overwrote another
    settings = sorted(json.loads(pd.read_csv(f)["method_settings"][0]).get("scale", 0) for f in files)
    assert settings == [0, 0.3, 0.5]
    dummy_dirs = sorted(p.parent.name for p in (tmp_path / "runs/adhoc/tiny/smoke/cat/dummy").glob("*/seed=0"))
    assert [d.split("-")[0] for d in dummy_dirs] == ["limit=1,scale=0.3", "limit=1,scale=0.5"]
    assert "4 jobs: 3 done, 1 skipped" in first.stdout and "erasebench-report" in first.stdout
    # Issue 18.7: the sweep ends with a table of what it produced, one row per method and setting.
    table = first.stdout.split("What this sweep produced")[1].split("Report: erasebench-report")[0]
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert [r.split(" | ")[3] for r in rows] == ["None (original)", "Dummy (scale=0.5)", "Dummy (scale=0.3)"]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = run_cli(args, tmp_path)
    assert again.returncode == 0 and "4 jobs: 0 done, 4 skipped" in again.stdout, again.stdout + again.stderr
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


@pytest.mark.parametrize("args, expected", [
    (["-m", "method=dummy,none", "++method.scale=0.4"], "Unknown setting 'scale' of method 'none'"),
    (["-m", "method=none,dummy", "method.scale=0.4"], "methods.<method>.scale=value"),
    (["-m", "method=none,dummy", "seed=0,abc"], "seed='abc'"),
    (["-m", "concept=cat,zebra", "hydra/launcher=submitit_local"], "Unknown concept 'zebra'"),
], ids=["setting-of-one-method", "unscoped-setting", "bad-seed", "submitit-concept"])
def test_a_bad_sweep_stops_before_anything_starts(args: list[str], expected: str, tmp_path: Path) -> None:
    if "hydra/launcher=submitit_local" in args:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "erasebench: error:" in proc.stderr and expected in proc.stderr and "Traceback" not in proc.stderr
    assert "nothing was started" in proc.stderr.lower()
    assert not (tmp_path / "runs").exists()  # no run directory, no sweep directory, nothing submitted


def _broken_plugin(site: Path) -> None:
    """Install (as files) a third-party method whose module fails to import."""
    site.mkdir(parents=True)
    (site / "broken_erasure.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")
    dist = site / "broken_erasure-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-erasure\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[erasebench.methods]\nbroken = broken_erasure:Broken\n")


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    _broken_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli(["-m", "method=broken,none", *ONE], tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed to import" in proc.stderr and "the others run" in proc.stderr  # said before it started
    assert len(_metrics(tmp_path / "runs")) == 1  # none ran after broken failed
    [status_file] = (tmp_path / "runs/adhoc/tiny/smoke/cat/broken").rglob("status.json")
    status = json.loads(status_file.read_text())
    assert status["status"] == "failed" and "libfoo.so" in status["error"]
    assert "Traceback" in Path(status["traceback"]).read_text()
    assert "2 jobs: 1 done, 0 skipped (finished before), 1 failed" in proc.stdout
    assert f"failed: {status_file.parent}" in proc.stdout
    rep = run_cli([str(tmp_path / "runs/adhoc"), "--no-grids"], tmp_path, module="erasebench.report")
    assert rep.returncode == 0, rep.stderr
    assert "1 runs have no results" in rep.stderr and f"failed: {status_file.parent}" in rep.stderr
    listed = pd.read_csv(tmp_path / "runs/adhoc/report/unfinished_runs.csv")
    assert listed["status"].tolist() == ["failed"] and "libfoo.so" in listed["error"][0]
    assert "Runs without results" in (tmp_path / "runs/adhoc/report/index.html").read_text()


def test_a_rerun_that_succeeds_drops_the_failed_attempts_traceback(tmp_path: Path) -> None:
    _broken_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    assert run_cli(["-m", "method=broken", *ONE], tmp_path, env=env).returncode != 0
    [run_dir] = {p.parent for p in (tmp_path / "runs").rglob("status.json")}
    assert (run_dir / "traceback.txt").exists()
    (tmp_path / "site/broken_erasure.py").write_text(  # the user fixes the plugin and runs again
        "from erasebench.methods.none import NoErasure\n\n\nclass Broken(NoErasure):\n    pass\n")
    proc = run_cli(["-m", "method=broken", *ONE], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert not (run_dir / "traceback.txt").exists()  # a stale traceback beside a done run misleads


def test_two_sweeps_at_once_run_each_job_once(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "erasebench.cli", "-m", "model=tiny", "task=smoke", "method=dummy",
            "method.sleep_s=3", "seed=0,1", *ONE, f"paths.results_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    both = "".join(logs)
    assert both.count("dummy changed") == 2, both  # each of the two jobs trained by one process only
    assert both.count("skip:") == 2  # the other process waited for it, then found it done
    assert len(_metrics(tmp_path / "runs")) == 2


def test_linking_run_images_is_safe_between_two_processes(tmp_path: Path) -> None:
    src = tmp_path / "cache"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.png").write_bytes(bytes([i]) * 64)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from erasebench.runner import _link_images
        paths = sorted(Path({str(src)!r}).glob('*.png'))
        for _ in range(300):
            _link_images(paths, Path({str(tmp_path / 'out')!r}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:05d}.png" for i in range(4)]


def test_the_thread_count_is_part_of_a_run_and_the_report_never_averages_across_it(tmp_path: Path) -> None:
    proc = run_cli(["-m", "threads=1,2", *ONE], tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = _metrics(tmp_path / "runs")
    assert len(files) == 2  # the 2-thread job did not skip as the 1-thread one's duplicate
    assert sorted(pd.read_csv(f)["device"][0] for f in files) == ["cpu (1 threads)", "cpu (2 threads)"]
    rep = run_cli([str(tmp_path / "runs/adhoc"), "--no-grids"], tmp_path, module="erasebench.report")
    assert rep.returncode == 2 and "differ in 'device'" in rep.stderr, rep.stderr
