"""The benchmark scripts run on CPU with model=tiny and print their figures (speed targets live in BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_speed_prints_the_three_ratios() -> None:
    out = _run("bench_speed.py", "--model", "tiny", "--images", "8", "--reference-images", "4", "--esd-iters", "2")
    for key in ("a_images_s", "b_reference_images_s", "c_flop_bound_images_s", "esd_ours_it_s", "esd_reference_it_s"):
        assert out[key] > 0, key
    assert out["a_over_b"] == pytest.approx(out["a_images_s"] / out["b_reference_images_s"], rel=0.02, abs=0.01)
    assert out["a_images_s"] < out["c_flop_bound_images_s"]  # nothing beats the roofline
    # FLOPs of one tiny image: 4 DDIM steps x a CFG pair of UNet calls plus a VAE decode, counted, not guessed.
    assert out["flops_per_image"] > 0 and out["peak_source"].startswith("measured")


@pytest.mark.slow  # bench_speed (default run) times generation through the same code
def test_bench_generate_prints_throughput() -> None:
    out = _run("bench_generate.py", "--model", "tiny", "--images", "8")
    assert out["images"] == 8 and out["images_per_s"] > 0


def test_bench_methods_times_each_method_alone_and_keeps_going_after_a_failure() -> None:
    rows = _run("bench_methods.py", "--model", "tiny", "--methods", "esd,no_such_method", "--smoke")
    esd, bad = rows
    assert esd["method"] == "esd" and esd["seconds"] > 0 and esd["peak_rss_mib"] > 0
    assert esd["settings"]["iterations"] == 2  # the smoke settings were applied
    assert bad["method"] == "no_such_method" and "esd" in bad["error"]  # the error lists the valid names


@pytest.mark.slow  # CI time; the same checks run over the registry in tests/test_contract.py
def test_sd_arch_check_runs_its_checks_on_the_tiny_model() -> None:
    rows = _run("sd_arch_check.py", "--model", "tiny", "--methods", "uce,none")
    assert [r["method"] for r in rows] == ["uce", "none"] and all(r["ok"] for r in rows), rows
    uce, none = rows
    assert uce["trained_tensors"] > 0 and none["trained_tensors"] == 0 and uce["peak_rss_mib"] > 0


@pytest.mark.slow  # the SD v1.4 architecture on CPU: 36 min for the 13 methods at 1 thread (BENCHMARKS.md)
def test_every_method_on_the_sd14_architecture() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/sd_arch_check.py")], capture_output=True,
                          text=True, timeout=7200)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {r["method"]: r.get("failures") for r in rows if not r["ok"]}
    assert len(rows) == 13 and not failed and proc.returncode == 0, failed
    assert {r["task"] for r in rows} == {"style", "object", "nudity"}


def test_gpu_check_smoke_writes_its_json_and_markdown(tmp_path: Path) -> None:
    out = _run("gpu_check.py", "--smoke", "--out", str(tmp_path))
    assert out["failed_methods"] == []
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    gen = {(r["generator"], r["batch"]): r for r in result["generation"]}
    ours = gen["erasebench (sdpa)", 2]
    assert ours["images_s"] > 0 and ours["x_reference"] == pytest.approx(
        ours["images_s"] / gen["per-image fp32 loop (reference scripts)", 1]["images_s"], rel=0.02)
    assert {"erasebench (no_sdpa)", "erasebench (channels_last)"} <= {g for g, _ in gen}
    assert result["esd"]["s_per_it"] > 0 and len(result["methods"]) == 13
    assert all(r["seconds"] >= 0 for r in result["methods"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## (a) generation" in md and "| esd |" in md


def test_sd_iteration_cost_times_iterations_and_projects_them(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks/sd_iteration_cost.py"), "--model", "tiny", "--methods",
                    "esd,uce", "--out", str(tmp_path)], check=True, capture_output=True, timeout=600,
                   env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    esd, uce = json.loads((tmp_path / "sd_iteration_cost.json").read_text())["rows"]
    assert esd["timed_steps"] == 4 and len(esd["intervals_s"]) == 3  # TIMING's 4 iterations, 3 intervals
    assert esd["s_per_it"] == pytest.approx(sum(esd["intervals_s"]) / 3, abs=0.02)
    assert esd["flops_per_it"]["rest"] > 0 and esd["paper_steps"] == 1000
    # tiny: no scaling, so the projection is the measured FLOPs over the H100 at the anchors' utilisation
    assert esd["tflop_per_it_512"] == pytest.approx(esd["flops_per_it"]["rest"] / 1e12, abs=0.01)
    assert "s_per_it" not in uce and uce["ok"] and uce["erase_s"] >= 0  # closed form: one solve, no iterations
    assert "| esd | smoke | True |" in (tmp_path / "sd_iteration_cost.md").read_text()
