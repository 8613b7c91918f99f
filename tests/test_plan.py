"""The plan stage: a run's identity and directory, scoped method settings, and the checks before a model loads."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from conftest import compose_cfg

from erasebench.configs import build_config, build_task, spread
from erasebench.errors import ConfigError, ErasebenchError
from erasebench.jobs import prepare
from erasebench.plan import check_scalars, config_hash, effective_config, run_subdir, settings_label

TINY = ["model=tiny", "task=smoke"]


def test_a_sweep_over_a_setting_gives_one_directory_per_value_and_reruns_find_them() -> None:
    a, b = compose_cfg([*TINY, "method=uce", "method.lamb=0.5"]), compose_cfg([*TINY, "method=uce", "method.lamb=0.1"])
    da, db = run_subdir(a, ["method.lamb=0.5"]), run_subdir(b, ["method.lamb=0.1"])
    assert da != db and da.startswith("tiny/smoke/cat/uce/lamb=0.5-") and da.endswith("/seed=0")
    assert run_subdir(compose_cfg([*TINY, "method=uce", "method.lamb=0.5"]), ["method.lamb=0.5"]) == da  # stable
    # Where results go is not what they are; every setting that changes a number is.
    moved = compose_cfg([*TINY, "method=uce", "method.lamb=0.5", "paths.results_dir=/elsewhere", "experiment_name=x"])
    assert config_hash(moved) == config_hash(a)
    for other in (["limit=3"], ["threads=1"], ["+task.evaluators.fid={backend: random_test}"], ["model.sampler.steps=3"]):
        assert config_hash(compose_cfg([*TINY, "method=uce", "method.lamb=0.5", *other])) != config_hash(a), other
    # Seeds of one setting sit side by side under one settings directory.
    seed1 = run_subdir(compose_cfg([*TINY, "method=uce", "method.lamb=0.5", "seed=1"]), ["method.lamb=0.5"])
    assert seed1.rsplit("/", 1)[0] == da.rsplit("/", 1)[0] and seed1.endswith("seed=1")


def test_the_readable_label_holds_this_jobs_command_line_settings_only() -> None:
    overrides = ["method=uce", "seed=1", "method.lamb=0.5", "++methods.uce.erase_scale=2", "++methods.esd.iterations=5",
                 "paths.results_dir=/x/y", "hydra/launcher=slurm", "limit=4", "model.path=/models/sd 1.4"]
    assert settings_label(overrides, "uce") == "erase_scale=2,lamb=0.5,limit=4,model.path=_models_sd_1.4"
    assert settings_label(["method=none", "seed=0"], "none") == ""


def test_a_scoped_setting_changes_only_its_own_method() -> None:
    none = compose_cfg([*TINY, "method=none"])
    scoped_none = compose_cfg([*TINY, "method=none", "++methods.dummy.scale=0.3"])
    assert config_hash(scoped_none) == config_hash(none)
    dummy = compose_cfg([*TINY, "method=dummy", "++methods.dummy.scale=0.3"])
    assert effective_config(dummy)["method"]["scale"] == 0.3 and "methods" not in effective_config(dummy)
    assert config_hash(dummy) != config_hash(compose_cfg([*TINY, "method=dummy"]))
    assert prepare(dummy).method.config.scale == 0.3


@pytest.mark.parametrize("scoped, expected", [("++methods.dummy.scalee=1", "Unknown setting 'scalee' of method 'dummy'"),
                                              ("++methods.dumy.scale=1", "In methods.dumy: Unknown method 'dumy'"),
                                              ("++methods.dummy.scale=abc", "setting 'scale' of method 'dummy'")])
def test_scoped_settings_are_checked_against_their_methods_config(scoped: str, expected: str) -> None:
    with pytest.raises(ErasebenchError, match=expected):
        prepare(compose_cfg([*TINY, "method=none", scoped]))  # checked even in another method's job


@pytest.mark.parametrize("key, value", [("limit", -1), ("limit", 0), ("limit", 2.5), ("limit", "abc"), ("limit", True),
                                        ("seed", "abc"), ("seed", -1), ("seed", 1.5), ("threads", 0),
                                        ("device", "cudaa"), ("device", "cuda:x")])
def test_run_settings_are_checked_before_anything_loads(key: str, value: object) -> None:
    cfg = {**compose_cfg([*TINY, "method=none"]), key: value}
    with pytest.raises(ConfigError, match=rf"{key}={value!r}"):
        check_scalars(cfg)
    with pytest.raises(ConfigError):
        prepare(cfg)


def test_a_non_finite_setting_is_refused() -> None:
    from erasebench.registry import METHODS

    with pytest.raises(ConfigError, match="must be a finite number"):
        build_config(METHODS.get("esd"), {"lr": float("nan")}, "method")
    with pytest.raises(ConfigError, match="finite"):
        build_config(METHODS.get("esd"), {"lr": float("inf")}, "method")


def test_limit_spreads_over_the_concepts_and_phrasings_of_a_split() -> None:
    cfg = compose_cfg(["task=toy_object"])
    full = build_task(cfg["task"], "circle")
    task = build_task(cfg["task"], "circle", limit=10)
    kept = Counter(item.label for item in task.splits["preserve"])
    assert set(kept) == {"square", "triangle", "star", "cross"} and max(kept.values()) - min(kept.values()) <= 1
    erase_prompts = {item.prompt for item in task.splits["erase"]}
    assert len(erase_prompts) == min(10, len({i.prompt for i in full.splits["erase"]}))  # every phrasing first
    assert all(len(s) == 10 for s in task.splits.values())
    assert build_task(cfg["task"], "circle", limit=10) == task  # deterministic
    order = [full.splits["preserve"].index(i) for i in task.splits["preserve"]]
    assert order == sorted(order)  # the split's own order is kept
    assert spread(full.splits["erase"], 10_000) == list(full.splits["erase"])


def test_the_plan_module_imports_without_torch() -> None:
    code = "import sys, erasebench.plan; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
