"""The Methods I, II and III bar on the toy world, through the harness itself (``runner.run`` on ``model=toy``).

Bar: the erased concept's ``acc_erase`` <= 0.30 and the mean ``acc_preserve`` of the other concepts within
0.15 of the unmodified model's, for run seed 0. The default test run has one method per kind of concept: UCE on
toy_style (a closed form, seconds) and S-GRACE on toy_object (trained); the others, ESD included, are ``slow``.
Methods whose seed-0 run misses the bar at the settings tried are ``xfail(strict=True)`` with the measured
numbers, so a change that makes them pass is noticed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_cfg

from erasebench import runner

BAR_ERASE, BAR_PRESERVE_DROP = 0.30, 0.15
MISSES = {  # measured with the toy presets (results/toy/): erase / preserve, `none` in brackets
    ("advanchor", "toy_object"): "AdvAnchor leaves toy objects unchanged: 1.000 / 1.000 (1.000 / 1.000); with less "
                                 "preservation (lambda 0-0.3) erasure swings with the seed; "
                                 "conf/preset/toy_advanchor.yaml lists the settings tried and the diagnosis",
    ("advunlearn", "toy_object"): "after issue 19's fidelity fixes AdvUnlearn keeps toy circles: 0.500 / 1.000 at "
                                  "lr 3e-5 (1.000 / 1.000); lr 5e-5, 1e-4 and 400 iterations also miss "
                                  "(conf/preset/task/toy_advunlearn_toy_object.yaml); seeds 1 / 2 give 0.200 and 0.167, "
                                  "so the 3-seed mean (0.289) meets the bar",
    ("sgrace", "toy_style"): "S-GRACE's seed 0 keeps 10 of 30 striped images at its toy lr 1.5e-3: 0.333 / 1.000 "
                             "(1.000 / 0.979); seeds 1 and 2 give 0.067, and the 3-seed mean meets the bar "
                             "(conf/preset/task/toy_sgrace_toy_style.yaml)",
    ("doco", "toy_object"): "after issue 19's fidelity fixes (start-token detach, warm-up rule) DoCo gives "
                            "0.367 / 0.979 at the toy preset (1.000 / 1.000); seeds 1 / 2: 0.300 / 0.958, 0.467 / 1.000 "
                            "(the mean, 0.378, misses as before the fixes: 0.46; conf/preset/toy_doco.yaml)",
}


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """The presets and results/toy were measured with 1 CPU thread; fp32 toy runs are not bit-identical across
    thread counts (fp32 ESD on toy_object gave acc_erase 0.100, 0.367 and 0.400 with 1, 2 and 4; its preset now
    trains in float64 and gives 0.233 with each), so the bar is tested there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _acc(method: str, task: str, shared: Path) -> dict[str, float]:
    cfg = compose_cfg(["model=toy", f"task={task}", f"method={method}", "device=cpu",
                       f"paths.cache_dir={shared / 'cache'}", f"paths.results_dir={shared / 'runs'}"])
    cfg["task"]["evaluators"] = {"acc": cfg["task"]["evaluators"]["acc"]}  # the bar needs only ACC
    df = pd.read_csv(runner.run(cfg, shared / "runs" / task / method))
    acc = df[df["evaluator"] == "acc"].set_index("metric")["value"]
    return {"erase": float(acc["acc_erase"]), "preserve": float(acc["acc_preserve"])}


# One closed form (UCE, seconds) and one trained method (S-GRACE, the fastest trained one: about 75 s) keep
# both kinds of concept in the default run; ESD (about 6 min at 1 thread, in float64) and the rest are `slow`.
DEFAULT_RUN = {("uce", "toy_style"), ("sgrace", "toy_object")}
CASES = [pytest.param(m, t, marks=[*([pytest.mark.slow] if (m, t) not in DEFAULT_RUN else []),
                                   *([pytest.mark.xfail(reason=MISSES[(m, t)], strict=True)] if (m, t) in MISSES else [])],
                      id=f"{m}-{t}")
         for m in ("esd", "sdd", "abconcept", "advanchor", "advunlearn", "allbutone",
                   "uce", "rece", "doco", "realera", "trce", "sgrace")
         for t in ("toy_object", "toy_style")]


@pytest.mark.parametrize(("method", "task"), CASES)
def test_method_erases_the_toy_concept_and_keeps_the_others(method: str, task: str, toy_shared: Path) -> None:
    before = _acc("none", task, toy_shared)
    after = _acc(method, task, toy_shared)
    assert before["erase"] >= 0.8  # the unmodified model does draw the concept
    assert after["erase"] <= BAR_ERASE, (before, after)
    assert after["preserve"] >= before["preserve"] - BAR_PRESERVE_DROP, (before, after)
