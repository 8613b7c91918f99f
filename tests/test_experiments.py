"""The saved paper sweeps, quick size, end to end on ``model=tiny``: runs, report, every output's shape.

Each job is composed exactly as ``erasebench -m experiment=<name>_quick model=tiny`` would compose it (the same
Hydra config, one point of the sweep at a time), then evaluator backbones get seeded random weights and
methods their smoke step counts (no real weights exist here; the numbers are meaningless, the shapes are not).
The default run covers one concept x {none, esd} per experiment; every method (two concepts) is in the ``slow``
variant.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from erasebench import runner
from erasebench.registry import METHODS
from erasebench.report.cli import report
from erasebench.report.plugins import method_name

EXPERIMENTS = {"advanchor_table1": "style", "advanchor_table2": "object", "advanchor_table3": "i2p",
               "nudity": "nudity"}
SMOKE_EVALUATORS = {
    "fid": {"backend": "random_test"},
    "lpips": {"backbone_weights": "random_init_test"},
    "acc": {"backbone_weights": "random_init_test", "train_images_per_class": 2, "train_epochs": 2,
            "train_resize": 32, "resize": 32, "crop": 32},
    "nudenet": {},
}


def _sweep(name: str) -> dict[str, list[str]]:
    text = (resources.files("erasebench.conf") / "experiment" / f"{name}.yaml").read_text()
    params = OmegaConf.create(text)["hydra"]["sweeper"]["params"]
    return {k: str(v).split(",") for k, v in params.items()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run_quick(name: str, methods: list[str], n_concepts: int, tmp: Path, cache: Path) -> tuple[list[str], Path]:
    sweep = _sweep(f"{name}_quick")
    assert set(sweep["method"]) == set(METHODS.names()) - {"dummy"}  # every method of the project
    concepts = sweep["concept"][:n_concepts]
    for concept in concepts:
        for method in methods:
            cfg = compose_cfg([f"experiment={name}_quick", "model=tiny", f"method={method}", f"concept={concept}",
                               "device=cpu", f"paths.cache_dir={cache}"])
            assert cfg["task"]["name"] == EXPERIMENTS[name] and cfg["experiment_name"] == f"{name}_quick"
            cfg["method"].update(METHODS.get(method).smoke_settings)
            for label, node in cfg["task"]["evaluators"].items():
                node.update(SMOKE_EVALUATORS[node.get("evaluator", label)])
            runner.run(cfg, tmp / "runs" / concept / method)
    return concepts, tmp / "runs"


def _check_outputs(name: str, methods: list[str], concepts: list[str], runs: Path, out: Path) -> None:
    task = EXPERIMENTS[name]
    paths = report(runs, out)
    df = pd.read_csv(paths["results"])
    assert sorted(df["method"].unique()) == sorted(methods)
    assert sorted(df["concept"].unique()) == sorted(concepts)
    assert set(df["task"]) == {task} and set(df["experiment"]) == {f"{name}_quick"}
    per_run = df.groupby(["concept", "method"]).size()
    assert per_run.nunique() == 1  # every run produced the same rows
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and not re.search(r'(src|href)="(?!data:)', html)
    grids = [p for k, p in paths.items() if k.startswith("grid")]
    assert grids and all(p.stat().st_size > 0 for p in grids)
    if task == "nudity":
        counts = pd.read_csv(paths[f"nudenet tiny {task} csv"])
        assert len(counts) == len(methods) and paths[f"nudenet tiny {task} png"].stat().st_size > 0
        assert {"split", "metric"} <= set(df.columns) and (df[df.evaluator == "nudenet"]["split"] == "erase").all()
    tex = paths[f"paper tiny {task}"].read_text()
    assert tex.startswith("% packages: booktabs") and r"\resizebox" not in tex
    tables = tex.split(r"\end{table}")[:-1]
    for part in tables:
        assert re.findall(r"\\(begin|end)\{(\w+)\}", part) == \
            [("begin", "table"), ("begin", "tabular"), ("end", "tabular")]
        assert all(rule in part for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
        lines = [x for x in part.splitlines() if x.endswith(r"\\")]
        header, rows = lines[1], lines[2:]
        assert all(r.count(" & ") == header.count(" & ") for r in rows)  # every row fills the header's columns
        first = [r.split(" & ")[0].replace(r"\_", "_") for r in rows]
        if header.startswith("Concept &"):  # the AdvAnchor layout: concepts (and Avg when several) as rows
            assert first == [*concepts, *(["Avg"] if len(concepts) > 1 else [])]
        else:  # methods as rows, in the sweep's order with the baseline first
            assert first == [method_name(m) for m in methods]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment_end_to_end(name: str, tmp_path: Path, cache_dir: Path) -> None:
    methods = ["none", "esd"]  # one concept each keeps the default run short; the slow variant takes two
    concepts, runs = _run_quick(name, methods, 1, tmp_path, cache_dir)
    _check_outputs(name, methods, concepts, runs, tmp_path / "report")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment_every_method(name: str, tmp_path: Path, cache_dir: Path) -> None:
    methods = _sweep(f"{name}_quick")["method"]
    concepts, runs = _run_quick(name, methods, 2 if name != "nudity" else 1, tmp_path, cache_dir)
    _check_outputs(name, methods, concepts, runs, tmp_path / "report")
