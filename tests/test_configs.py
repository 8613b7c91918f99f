"""Every YAML composes, every plugin has a YAML, and plugin settings are validated key by key."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pytest
from conftest import compose_cfg

from erasebench.api import Method
from erasebench.configs import build_config, build_evaluators, build_task, evaluator_defaults, yaml_names
from erasebench.errors import ConfigError, MissingFileError, UnknownNameError
from erasebench.registry import EVALUATORS, METHODS

GROUP_FILES = [(g, n) for g in ("model", "method", "task", "experiment", "evaluator") for n in sorted(yaml_names(g))]


@pytest.mark.parametrize(("group", "name"), GROUP_FILES, ids=[f"{g}/{n}" for g, n in GROUP_FILES])
def test_every_yaml_composes(group: str, name: str) -> None:
    if group == "evaluator":  # not a Hydra group: defaults merged under a task's settings
        cls = EVALUATORS.get(name)
        build_config(cls, evaluator_defaults(name), "evaluator")
        return
    cfg = compose_cfg([f"{group}={name}"])
    assert cfg["model"]["name"] and cfg["method"]["name"] and cfg["task"]["name"]
    if group == "method":
        cls = METHODS.get(cfg["method"]["name"])
        build_config(cls, {k: v for k, v in cfg["method"].items() if k != "name"}, "method")
    if group == "task":
        task = build_task(cfg["task"], cfg["concept"])
        assert task.splits["erase"] and task.splits["preserve"]
        if name == "coco":  # FID against real COCO images: the user must name the folder
            with pytest.raises(ConfigError, match="reference_dir"):
                build_evaluators(task)
            return
        assert build_evaluators(task)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_a_yaml_named_after_it(name: str) -> None:
    assert name in yaml_names("method")
    assert compose_cfg([f"method={name}"])["method"]["name"] == name


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_every_evaluator_has_a_yaml_named_after_it(name: str) -> None:
    path = resources.files("erasebench.conf") / "evaluator" / f"{name}.yaml"
    assert path.is_file() and f"name: {name}" in path.read_text()


class _Plugin(Method):
    name = "demo"

    @dataclass
    class Config:
        lr: float = 1e-5
        iterations: int = 1000
        train_method: str = "xattn"

    def erase(self, pipe, task, run):  # type: ignore[no-untyped-def]
        return pipe


def test_config_defaults_and_overrides() -> None:
    cfg = build_config(_Plugin, {"iterations": "20"}, "method")
    assert cfg == _Plugin.Config(lr=1e-5, iterations=20, train_method="xattn")


def test_unknown_key_names_the_key_and_suggests() -> None:
    with pytest.raises(UnknownNameError, match="'iteration' of method 'demo'.*Did you mean 'iterations'"):
        build_config(_Plugin, {"iteration": 5}, "method")


def test_bad_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'lr' of method 'demo'"):
        build_config(_Plugin, {"lr": "fast"}, "method")


def test_task_splits_expand_templates_and_limit() -> None:
    node = compose_cfg(["task=smoke"])["task"]
    task = build_task(node, "dog")
    assert {it.label for it in task.splits["erase"]} == {"dog"}
    assert {it.label for it in task.splits["preserve"]} == {"cat", "car"}
    assert all("dog" in it.prompt for it in task.splits["erase"])
    assert len(build_task(node, "dog", limit=3).splits["erase"]) == 3


def test_unknown_concept_and_missing_prompt_file() -> None:
    node = compose_cfg(["task=smoke"])["task"]
    with pytest.raises(UnknownNameError, match="Did you mean 'dog'"):
        build_task(node, "dgo")
    node["splits"]["erase"]["prompt_file"] = "no/such/file.csv"
    with pytest.raises(MissingFileError, match="no/such/file.csv"):
        build_task(node, "dog")


def _preset_cases() -> list[tuple[str, str, str | None]]:
    models, methods, tasks = yaml_names("model"), yaml_names("method"), yaml_names("task")
    cases = [(m, me, None) for m in models for me in methods if f"{m}_{me}" in yaml_names("preset")]
    cases += [(m, me, t) for m in models for me in methods for t in tasks if f"{m}_{me}_{t}" in yaml_names("preset/task")]
    return cases


def test_every_preset_file_is_reachable() -> None:
    found = {f"{m}_{me}" if t is None else f"{m}_{me}_{t}" for m, me, t in _preset_cases()}
    assert found == yaml_names("preset") | yaml_names("preset/task")


@pytest.mark.parametrize(("model", "method", "task"), _preset_cases())
def test_presets_apply_under_the_command_line(model: str, method: str, task: str | None) -> None:
    overrides = [f"model={model}", f"method={method}"] + ([f"task={task}"] if task else [])
    node = compose_cfg(overrides)["method"]
    plain = compose_cfg(["model=tiny", f"method={method}"] + ([f"task={task}"] if task else []))["method"]
    assert node != plain  # the preset changed something
    cls = METHODS.get(method)
    build_config(cls, {k: v for k, v in node.items() if k != "name"}, "method")
    scalars = [k for k in node if k != "name" and node[k] != plain[k] and isinstance(plain[k], (int, float, str))]
    for key in scalars[:1]:  # a command-line value beats the preset
        assert compose_cfg([*overrides, f"method.{key}={plain[key]}"])["method"][key] == plain[key]
