"""Contract tests, parametrized over the registries: every plugin gets them for free."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import cached_run_context, paper_method, task_of

from erasebench.api import SPLITS, Evaluator, Method, RunContext, Score
from erasebench.configs import build_config, evaluator_defaults
from erasebench.generate import weight_digests
from erasebench.registry import EVALUATORS, METHODS


def _ctx(tmp_path: Path, pipe: Any, seed: int = 0) -> RunContext:
    return cached_run_context(pipe, tmp_path, seed)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name: str, tiny_pipe: Any, tmp_path: Path) -> None:
    import torch

    method = paper_method(name)
    assert isinstance(method, Method) and method.name == name
    before = weight_digests(tiny_pipe)
    torch.manual_seed(0)
    out = method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    assert out is not None and hasattr(out, "unet")
    changed = {k for k, v in weight_digests(out).items() if before[k] != v}
    assert (not changed) if name == "none" else bool(changed)


@pytest.mark.parametrize("name", METHODS.names())
def test_exactly_the_declared_tensors_change(name: str, tiny_pipe: Any, tmp_path: Path) -> None:
    import torch

    method = paper_method(name)
    declared = method.trained_tensors(tiny_pipe, task_of())
    assert declared is not None, f"{name} does not declare the tensors it trains"
    before = weight_digests(tiny_pipe)
    assert declared <= set(before), sorted(declared - set(before))[:3]  # real weight names
    torch.manual_seed(0)
    out = method.erase(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    after = weight_digests(out)
    assert set(after) == set(before)  # no adapter or tensor left behind
    changed = {k for k, v in after.items() if before[k] != v}
    assert not changed - declared, f"undeclared: {sorted(changed - declared)[:5]}"
    assert not declared - changed, f"declared, unchanged: {sorted(declared - changed)[:5]}"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_is_deterministic_for_a_seed(name: str, _tiny_master: Any, tmp_path: Path) -> None:
    import copy

    import torch

    digests = []
    for i in range(2):
        pipe = copy.deepcopy(_tiny_master)
        torch.manual_seed(0)
        digests.append(weight_digests(paper_method(name).erase(pipe, task_of(), _ctx(tmp_path / str(i), pipe))))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_contract(name: str, tiny_pipe: Any, tmp_path: Path) -> None:
    cls = EVALUATORS.get(name)
    assert issubclass(cls, Evaluator) and cls.higher_is_better
    assert all(isinstance(v, bool) for v in cls.higher_is_better.values())
    ev = cls(build_config(cls, {**evaluator_defaults(name), **cls.smoke_settings}, "evaluator"))
    result = ev.evaluate(tiny_pipe, task_of(), _ctx(tmp_path, tiny_pipe))
    assert set(result) <= set(SPLITS) and result
    for split, metrics in result.items():
        assert set(metrics) <= set(cls.higher_is_better)
        for metric, value in metrics.items():
            assert math.isfinite(value.value if isinstance(value, Score) else float(value))
            info = cls.metric_info(split, metric)
            assert info.higher_is_better in (True, False, None) and info.per_image in ("mean", "sum", "")
            if isinstance(value, Score) and value.samples:  # per-image values give the value (the CI is around it)
                assert info.per_image, (split, metric)
                agg = sum(value.samples) if info.per_image == "sum" else sum(value.samples) / len(value.samples)
                # torchmetrics floors the CLIP score's mean at 0, which only a random test model reaches; the
                # runner then records "no CI" rather than an interval around another number.
                floored = metric == "clip_score" and value.value == 0.0 and agg < 0
                assert floored or agg == pytest.approx(value.value, rel=1e-6, abs=1e-9), (split, metric)


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_metric_metadata_covers_declared_metrics(name: str) -> None:
    cls = EVALUATORS.get(name)
    for (split, metric), info in cls.metrics.items():
        assert metric in cls.higher_is_better, f"{name}: metadata for undeclared metric {metric}"
        assert split in (*SPLITS, "*") and info.display, (name, split, metric)
    for metric in cls.higher_is_better:
        for split in SPLITS:
            assert cls.metric_info(split, metric).display
