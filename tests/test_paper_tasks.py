"""The paper tasks (style, object, nudity, i2p, coco): shipped prompt files, concept lists, split building.

The concept lists are AdvAnchor's (``train-scripts/Ladv1ablation_op3.py``); the I2P counts are those of the
4,703-prompt file (eval-protocol.md §1.1).
"""

from __future__ import annotations

import csv
from collections import Counter
from importlib import resources

import pytest
from conftest import compose_cfg

from erasebench.cli import _expand_concept_all
from erasebench.configs import build_task
from erasebench.errors import ConfigError, UnknownNameError

ADVANCHOR_STYLES = ["Cezanne", "Van Gogh", "Picasso", "Jackson Pollock", "Caravaggio", "Keith Haring",
                    "Kelly McKernan", "Tyler Edlin", "Kilian Eng"]
ADVANCHOR_OBJECTS = ["chain saw", "church", "gas pump", "tench", "garbage truck", "english springer", "golf ball",
                     "parachute", "french horn"]
I2P_COUNTS = {"sexual": 931, "shocking": 856, "harassment": 824, "self-harm": 801, "violence": 756,
              "illegal activity": 727, "hate": 231}


def _task(name: str, concept: str | None = None):  # type: ignore[no-untyped-def]
    cfg = compose_cfg([f"task={name}"])
    return build_task(cfg["task"], concept or cfg["concept"])


def _i2p_rows() -> list[dict[str, str]]:
    with (resources.files("erasebench") / "data" / "i2p_4703.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_i2p_file_has_4703_prompts_with_seed_guidance_and_the_category_split() -> None:
    rows = _i2p_rows()
    assert len(rows) == 4703
    counts = Counter(c.strip() for r in rows for c in r["categories"].split(",") if c.strip())
    assert dict(counts) == I2P_COUNTS
    assert all(int(r["evaluation_seed"]) >= 0 and float(r["evaluation_guidance"]) > 0 for r in rows)


@pytest.mark.parametrize("concept", ["hate", "harassment", "violence", "self_harm", "sexual", "shocking",
                                     "illegal_activity"])
def test_i2p_erase_split_is_the_category_with_its_own_seeds_and_guidance(concept: str) -> None:
    task = _task("i2p", concept)
    category = task.concept_text
    rows = [r for r in _i2p_rows() if category in [c.strip() for c in r["categories"].split(",")]]
    erase = task.splits["erase"]
    assert len(erase) == I2P_COUNTS[category] == len(rows)
    assert [(i.prompt, i.seed, i.guidance) for i in erase] == \
        [(r["prompt"], int(r["evaluation_seed"]), float(r["evaluation_guidance"])) for r in rows]
    assert {i.label for i in erase} == {concept}  # scored as "in the erased category" by the I2P classifier
    assert {i.label for i in task.splits["preserve"]} >= {"tench", "church", "parachute"}  # ImageNet classes


def test_style_and_object_concepts_are_the_papers() -> None:
    style, obj = _task("style"), _task("object")
    assert list(style.concepts.values()) == ADVANCHOR_STYLES
    assert [v.lower() for v in obj.concepts.values()] == ADVANCHOR_OBJECTS  # Imagenette minus cassette player
    assert style.kind == "style" and obj.kind == "object" and style.anchor == "painting"


def test_object_splits_are_the_concepts_rows_250_images_each() -> None:
    task = _task("object", "tench")
    assert len(task.splits["erase"]) == 250 and {i.label for i in task.splits["erase"]} == {"tench"}
    assert all(i.prompt == "an image of a tench" for i in task.splits["erase"])
    preserve = Counter(i.label for i in task.splits["preserve"])
    assert len(preserve) == 8 and set(preserve.values()) == {250} and "tench" not in preserve
    assert task.anchor == "fish"  # per-object parent class


def test_nudity_erase_split_is_all_of_i2p_and_preserve_is_imagenet_classes() -> None:
    task = _task("nudity")
    assert len(task.splits["erase"]) == 4703 and all(i.guidance for i in task.splits["erase"])
    assert len(task.splits["preserve"]) == 250 and len({i.label for i in task.splits["preserve"]}) == 10
    assert task.evaluators["nudenet"]["splits"] == ["erase"]


def test_concept_all_sweeps_every_concept_of_the_task() -> None:
    out = _expand_concept_all(["task=object", "concept=all", "method=esd"])
    assert out[0] == "--multirun"
    assert out[2] == "concept=" + ",".join(_task("object").concepts)
    with pytest.raises(SystemExit):
        _expand_concept_all(["task=style,object", "concept=all"])
    assert _expand_concept_all(["task=style", "concept=van_gogh"]) == ["task=style", "concept=van_gogh"]


def test_bad_split_settings_are_named() -> None:
    cfg = compose_cfg(["task=object"])
    cfg["task"]["splits"]["erase"]["rows_per_concpt"] = 3
    with pytest.raises(UnknownNameError, match="rows_per_concpt"):
        build_task(cfg["task"], "tench")
    cfg = compose_cfg(["task=object"])
    cfg["task"]["splits"]["erase"]["label_column"] = "klass"
    with pytest.raises(ConfigError, match="no column 'klass'"):
        build_task(cfg["task"], "tench")
