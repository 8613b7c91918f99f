"""Erased tensors round-trip, metric rows carry provenance, and files are written atomically."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from erasebench.generate import weight_digests
from erasebench.erased import load_erased, save_erased
from erasebench.results import COLUMNS, config_hash, finished_hash, write_metrics


def test_only_changed_tensors_are_saved_and_reload_reproduces(_tiny_master: Any, tmp_path: Path) -> None:
    pipe = copy.deepcopy(_tiny_master)
    before = weight_digests(pipe)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.to_k.weight.add_(0.01)
    changed = save_erased(pipe, before, tmp_path, {"method_hash": "abc"})
    assert changed and all(".attn2.to_k.weight" in k for k in changed)
    fresh = copy.deepcopy(_tiny_master)
    assert not load_erased(fresh, tmp_path, "other-hash")  # made by other settings: not reused
    assert load_erased(fresh, tmp_path, "abc")
    assert weight_digests(fresh) == weight_digests(pipe)


def test_config_hash_ignores_paths_but_not_settings() -> None:
    base = {"seed": 0, "method": {"name": "esd", "lr": 1e-5}, "paths": {"results_dir": "a"}}
    assert config_hash(base) == config_hash({**base, "paths": {"results_dir": "b"}})
    assert config_hash(base) != config_hash({**base, "method": {"name": "esd", "lr": 2e-5}})


def test_metrics_file_has_schema_and_hash(tmp_path: Path) -> None:
    write_metrics([{"metric": "acc", "value": 0.5, "config_hash": "h1"}], tmp_path / "metrics.csv")
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS
    assert finished_hash(tmp_path) == "h1"
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_erased_tensors_are_not_reused_after_a_task_change(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import compose_cfg

    from erasebench import runner

    base = ["model=tiny", "task=smoke", "method=dummy", "limit=1", f"paths.cache_dir={tmp_path / 'cache'}"]
    runner.run(compose_cfg(base), tmp_path / "run")
    first = (tmp_path / "run/erased/meta.json").stat().st_mtime_ns
    runner.run(compose_cfg([*base, "+task.anchor=thing"]), tmp_path / "run")  # same method, other task config
    assert (tmp_path / "run/erased/meta.json").stat().st_mtime_ns != first
    # Evaluator settings never change the weights: a rerun that only changes them reuses the erased tensors.
    second = (tmp_path / "run/erased/meta.json").stat().st_mtime_ns
    runner.run(compose_cfg([*base, "+task.anchor=thing", "task.evaluators.dummy={}", "+task.evaluators.fid={backend: random_test}"]),
               tmp_path / "run")
    assert (tmp_path / "run/erased/meta.json").stat().st_mtime_ns == second


def test_a_closed_form_run_saves_only_the_edited_key_value_weights(tmp_path: Path) -> None:
    """UCE through the harness: the run's tensors file holds exactly the attn2.to_k / to_v weights, and the
    method changes nothing else (the harness diffs every tensor of every component, no per-method list)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import compose_cfg
    from safetensors.torch import load_file

    from erasebench import runner

    runner.run(compose_cfg(["model=tiny", "task=smoke", "method=uce", "limit=1", f"paths.cache_dir={tmp_path / 'c'}"]),
               tmp_path / "run")
    saved = set(load_file(str(tmp_path / "run/erased/tensors.safetensors")))
    from erasebench.models import build_tiny

    expected = {f"unet.{n}" for n, _ in build_tiny().unet.named_parameters()
                if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    assert saved == expected


def test_erased_tensors_are_not_reused_after_a_data_file_the_method_read_changes(_tiny_master: Any,
                                                                                  tmp_path: Path) -> None:
    from erasebench.results import file_digests

    lists = tmp_path / "concepts.yaml"
    lists.write_text("circle: [a ring]\n")
    pipe = copy.deepcopy(_tiny_master)
    before = weight_digests(pipe)
    with torch.no_grad():
        next(iter(pipe.unet.parameters())).add_(0.01)
    save_erased(pipe, before, tmp_path / "run", {"method_hash": "abc", "data_files": file_digests([str(lists)])})
    assert load_erased(copy.deepcopy(_tiny_master), tmp_path / "run", "abc")
    lists.write_text("circle: [a ring, a disc]\n")  # same name, new contents: the config hash cannot see this
    assert not load_erased(copy.deepcopy(_tiny_master), tmp_path / "run", "abc")
    lists.unlink()
    assert not load_erased(copy.deepcopy(_tiny_master), tmp_path / "run", "abc")


def test_a_finished_run_is_redone_when_a_prompt_file_it_read_changes(tmp_path: Path) -> None:
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import compose_cfg

    from erasebench import runner

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\na photo of a house\n")
    cfg = compose_cfg(["model=tiny", "task=smoke", "method=dummy", "limit=1", f"paths.cache_dir={tmp_path / 'cache'}",
                       f"+task.splits.preserve.prompt_file={prompts}"])
    run = tmp_path / "run"
    runner.run(cfg, run)
    recorded = json.loads((run / "data_files.json").read_text())
    assert list(recorded) == [str(prompts.resolve())]
    done, erased = (run / "metrics.csv").stat().st_mtime_ns, (run / "erased/meta.json").stat().st_mtime_ns
    runner.run(cfg, run)
    assert (run / "metrics.csv").stat().st_mtime_ns == done  # unchanged inputs: skipped
    prompts.write_text("prompt\na photo of a tree\n")
    runner.run(cfg, run)
    assert (run / "metrics.csv").stat().st_mtime_ns != done  # the evaluation is redone ...
    assert (run / "erased/meta.json").stat().st_mtime_ns == erased  # ... and the dummy method read no data file
    assert json.loads((run / "data_files.json").read_text()) != recorded
