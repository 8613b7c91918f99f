"""Hydra launchers: a sweep through submitit_local gives the sequential sweep's rows; presets compose."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_module

from erasebench.results import KEY, SETTINGS

SWEEP = ["-m", "model=tiny", "task=smoke", "method=none,dummy", "seed=0,1"]


def _rows(root: Path) -> pd.DataFrame:
    files = sorted(root.rglob("metrics.csv"))
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    return df[KEY + ["value", "n", "config_hash"] + SETTINGS].sort_values(KEY).reset_index(drop=True)


@pytest.mark.slow  # 44 s: moved out of the default run to keep CI under 15 min (issue 19 added tests)
def test_submitit_local_sweep_matches_the_sequential_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {"OMP_NUM_THREADS": "1"}  # four jobs at once on a small CPU
    for sub in ("seq", "par"):
        (tmp_path / sub).mkdir()
    seq = run_cli(SWEEP, tmp_path / "seq", env=env)
    assert seq.returncode == 0, seq.stderr
    par = run_cli([*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"], tmp_path / "par",
                  env=env)
    assert par.returncode == 0, par.stderr
    # submitit ran each job in its own process (it leaves one log folder per job).
    assert len(list((tmp_path / "par/runs/adhoc/.submitit").glob("*/*_log.out"))) == 4
    a, b = _rows(tmp_path / "seq/runs"), _rows(tmp_path / "par/runs")
    assert len(a) == 4 * 4  # 2 methods x 2 seeds x (2 splits x 2 metrics)
    pd.testing.assert_frame_equal(a, b)
    # The four jobs shared one image cache: each weight set (none, and dummy per seed) rendered once.
    assert len(list((tmp_path / "par/cache/images").iterdir())) == len(list((tmp_path / "seq/cache/images").iterdir()))


def _launcher(overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra.launcher


def test_slurm_and_ray_presets_compose() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = _launcher(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.array_parallelism == 32 and launcher.account is None
    ray = _launcher(["hydra/launcher=ray_gpus"])
    assert ray._target_.endswith("RayLauncher") and ray.ray.remote.num_gpus == 1


def test_missing_launcher_plugin_names_the_install_command(tmp_path: Path) -> None:
    if __import__("importlib.util").util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("Ray launcher installed here")
    proc = run_cli(["-m", "hydra/launcher=ray_gpus"], tmp_path)
    assert proc.returncode == 2
    assert 'pip install -e ".[multigpu]"' in proc.stderr and "Traceback" not in proc.stderr
