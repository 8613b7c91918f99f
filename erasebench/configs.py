"""Turn composed YAML into typed objects: plugin configs and tasks.

Plugins never import Hydra: their settings arrive here as plain mappings and leave as the plugin's own
``Config`` dataclass, checked key by key and type by type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from erasebench.api import SPLITS, Plugin, PromptItem, Task
from erasebench.datafiles import DataReads, resolve_data_path
from erasebench.errors import ConfigError, MissingFileError, UnknownNameError, unknown_name_message
from erasebench.prompt_csv import guidance_cell, read_prompt_csv, seed_cell


def _check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinite numbers anywhere in a setting: no paper setting is one, and a NaN learning rate
    would only surface as NaN images after the whole erasure."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"Bad value for {where}: {value!r}; it must be a finite number.")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v, where)


def build_config(plugin: type[Plugin], kwargs: Mapping[str, Any], kind: str = "plugin") -> Any:
    """Validate ``kwargs`` against ``plugin.Config`` and return an instance of it.

    Args:
        plugin: A registered method or evaluator class.
        kwargs: Settings from YAML or the command line (without ``name``).
        kind: ``"method"`` or ``"evaluator"``, for messages.

    Raises:
        UnknownNameError: A key is not a field of the config (the message names it and the valid keys).
        ConfigError: A value has the wrong type.
    """
    fields = {f.name for f in dataclasses.fields(plugin.Config)}
    for key in kwargs:
        if key not in fields:
            msg = unknown_name_message("setting", str(key), fields, f" of {kind} '{plugin.name}'")
            raise UnknownNameError(msg)
    for key, value in kwargs.items():
        _check_finite(value, f"{kind} '{plugin.name}' setting '{key}'")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(plugin.Config), dict(kwargs))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "?"
        raise ConfigError(f"Bad value for setting '{key}' of {kind} '{plugin.name}': {exc.msg.splitlines()[0]}") from None
    except ConfigError as exc:  # raised by a Config's own __post_init__ checks
        raise ConfigError(f"{kind.capitalize()} '{plugin.name}': {exc}") from None


#: Entry-point group through which a third-party package adds its own YAML (a package holding conf groups).
CONF_GROUP = "erasebench.conf"


def conf_packages() -> list[str]:
    """Packages holding config groups: erasebench's own ``conf/``, then third-party ones."""
    return ["erasebench.conf", *(ep.value for ep in entry_points(group=CONF_GROUP))]


def yaml_names(group: str) -> set[str]:
    """Names of the YAML files of a config group, across :func:`conf_packages`."""
    names: set[str] = set()
    for package in conf_packages():
        try:
            folder = resources.files(package) / group
            names |= {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
    return names


def conf_yaml(group: str, name: str) -> dict[str, Any] | None:
    """``<group>/<name>.yaml`` of the first of :func:`conf_packages` that has it, as a plain dict (or None)."""
    for package in conf_packages():
        try:
            path = resources.files(package) / group / f"{name}.yaml"
        except ModuleNotFoundError:
            continue
        if path.is_file():
            node = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
            return dict(node or {})  # type: ignore[arg-type]
    return None


def evaluator_defaults(name: str) -> dict[str, Any]:
    """Settings from ``conf/evaluator/<name>.yaml`` (without ``name``); a task's settings go on top."""
    return {k: v for k, v in (conf_yaml("evaluator", name) or {}).items() if k != "name"}


def _prompt_file(path: str, reads: DataReads | None) -> Path:
    """A split's ``prompt_file``, found (and recorded in ``reads``) like every data file."""
    try:
        return reads.resolve(path) if reads is not None else resolve_data_path(path)
    except MissingFileError:
        raise MissingFileError(f"Prompt file '{path}' not found (looked at '{Path(path).expanduser().resolve()}' "
                               "and in erasebench/data/). Fix the task's 'prompt_file' setting or put the file "
                               "there.") from None


#: Keys of a split spec in a task YAML.
SPLIT_KEYS = {"templates", "prompts", "images_per_prompt", "seed", "prompt_file", "label_column", "match",
              "rows_per_concept", "seed_column", "guidance_column"}


def normalize_name(name: str) -> str:
    """Concept name as a lookup key: lower case, ``_`` and ``-`` as spaces (``Chain_Saw`` -> ``chain saw``)."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _matches(value: str, names: set[str]) -> bool:
    """Whether a CSV label cell (possibly a comma-separated multi-label list) names one of ``names``."""
    return any(normalize_name(v) in names for v in value.split(","))


def _csv_items(spec: Mapping[str, Any], concepts: Mapping[str, str], keys: list[str], n: int,
               seed0: int, reads: DataReads | None = None) -> list[PromptItem]:
    """Rows of a prompt CSV as items: every row, or (``label_column``) the rows of the split's concepts.

    Raises:
        ConfigError: A bad file (see :func:`~erasebench.prompt_csv.read_prompt_csv`), a named column it lacks,
            or a seed or guidance cell that is not a number.
    """
    path = _prompt_file(str(spec["prompt_file"]), reads)
    rows = read_prompt_csv(path)
    label_col, match = spec.get("label_column"), str(spec.get("match", "split"))
    seed_col, guidance_col = str(spec.get("seed_column", "evaluation_seed")), spec.get("guidance_column")
    per_concept = spec.get("rows_per_concept")
    # The default seed column may be absent (then the split's seed is used); one named explicitly must exist.
    for col in (c for c in (label_col, guidance_col, spec.get("seed_column")) if c):
        if rows and col not in rows[0]:
            raise ConfigError(f"Prompt file '{spec['prompt_file']}' has no column '{col}' "
                              f"(columns: {', '.join(rows[0])}).")
    if match not in ("split", "all"):
        raise ConfigError(f"Split setting 'match' must be 'split' or 'all', not '{match}'.")
    groups: dict[str, list[dict[str, str]]] = {}
    if label_col and match == "split":
        # A row belongs to a concept when its label cell names the concept's key or text (any case, _ - or space).
        for key in keys:
            names = {normalize_name(key), normalize_name(concepts[key])}
            groups[key] = [r for r in rows if _matches(r[label_col], names)]
    else:
        for r in rows:
            groups.setdefault(r[label_col] if label_col else r.get("label", ""), []).append(r)
    items: list[PromptItem] = []
    for label, group in groups.items():
        for row in group[: int(per_concept)] if per_concept else group:
            # An empty cell means "not given": the split's seed, the evaluator's guidance.
            seed = seed_cell(path, row, seed_col) if row.get(seed_col) else seed0
            g = guidance_cell(path, row, guidance_col) if guidance_col and row.get(guidance_col) else None
            items += [PromptItem(row["prompt"], seed + i, label, g) for i in range(n)]
    return items


def _split_items(spec: Mapping[str, Any], concepts: Mapping[str, str], erased: str, split: str,
                 reads: DataReads | None = None) -> list[PromptItem]:
    """Expand one split spec: templates x concepts x seeds, plus literal prompts and CSV rows.

    CSV rows (``prompt_file``): with ``label_column``, only the rows of the split's concepts (``match: split``,
    the default) or every row labelled by that column (``match: all``); ``rows_per_concept`` keeps the first N
    per concept; seeds from ``seed_column`` (``evaluation_seed``); a per-row guidance scale from
    ``guidance_column``. Each row gives ``images_per_prompt`` images with seeds ``seed, seed+1, ...``.
    """
    unknown = set(spec) - SPLIT_KEYS
    if unknown:
        raise UnknownNameError(unknown_name_message("setting", sorted(unknown)[0], SPLIT_KEYS, f" of split '{split}'"))
    n = int(spec.get("images_per_prompt", 1))
    seed0 = int(spec.get("seed", 0))
    # erase: the erased concept only; preserve: every other concept of the task.
    keys = [erased] if split == "erase" else [k for k in concepts if k != erased]
    items: list[PromptItem] = []
    for key in keys:
        for template in spec.get("templates", []) or []:
            items += [PromptItem(template.format(concept=concepts[key]), seed0 + i, key) for i in range(n)]
    for prompt in spec.get("prompts", []) or []:
        items += [PromptItem(str(prompt), seed0 + i, "") for i in range(n)]
    if spec.get("prompt_file"):
        items += _csv_items(spec, concepts, keys, n, seed0, reads)
    return items


def build_evaluators(task: Task) -> list[tuple[str, Any, list[str] | None]]:
    """The task's evaluators as (label, evaluator, splits or None for all), settings validated.

    A task may run one evaluator twice under two labels (``acc_i2p: {evaluator: acc, splits: [erase], ...}``):
    the I2P task scores its erase split with the I2P classifier and its preserve split with ImageNet's.

    Raises:
        UnknownNameError: An unknown evaluator or setting.
        ConfigError: A bad value, or ``splits`` naming a split the task does not have.
    """
    from erasebench.registry import EVALUATORS

    out = []
    for label, node in task.evaluators.items():
        kwargs = {k: v for k, v in node.items() if k not in ("evaluator", "splits")}
        name = str(node.get("evaluator", label))
        cls = EVALUATORS.get(name)
        splits = [str(s) for s in node["splits"]] if node.get("splits") else None
        if splits and set(splits) - set(task.splits):
            raise ConfigError(f"Task '{task.name}', evaluator '{label}': unknown splits "
                              f"{sorted(set(splits) - set(task.splits))} (splits: {', '.join(task.splits)}).")
        out.append((label, cls(build_config(cls, {**evaluator_defaults(name), **kwargs}, "evaluator")), splits))
    return out


def _round_robin(groups: list[list[Any]]) -> list[Any]:
    """The first item of each group, then the second of each, ...: ``[[a1, a2], [b1]] -> [a1, b1, a2]``."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def spread(items: Sequence[PromptItem], limit: int) -> list[PromptItem]:
    """At most ``limit`` items, spread evenly over the labels (concepts), then over the prompts of each.

    Taking the first ``limit`` would keep the first concept only (on ``toy_object`` the preserve split became
    ten squares). Items are taken round-robin over labels in order of first appearance, and within a label
    round-robin over its prompts (each prompt's seeds in order), so the result is deterministic and every
    concept and phrasing is represented as far as ``limit`` allows. The result keeps the split's order.
    """
    if limit >= len(items):
        return list(items)
    by_label: dict[str, dict[str, list[int]]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(item.label, {}).setdefault(item.prompt, []).append(i)
    per_label = [_round_robin(list(prompts.values())) for prompts in by_label.values()]
    keep = sorted(_round_robin(per_label)[:limit])
    return [items[i] for i in keep]


def build_task(cfg: Mapping[str, Any], concept: str, limit: int | None = None, reads: DataReads | None = None
               ) -> Task:
    """Build a :class:`Task` from a ``conf/task/*.yaml`` node.

    Args:
        cfg: The task node (``name``, ``kind``, ``concepts``, ``splits``, ``evaluators``, ...).
        concept: Key of the concept to erase; must be one of ``cfg.concepts``.
        limit: Keep at most this many images per split, spread over its concepts (:func:`spread`), for smoke runs.
        reads: Where to record the prompt files read.

    Raises:
        UnknownNameError: ``concept`` is not a concept of the task.
        ConfigError: A split is missing or empty.
    """
    concepts = {str(k): str(v) for k, v in dict(cfg["concepts"]).items()}
    if concept not in concepts:
        raise UnknownNameError(unknown_name_message("concept", concept, concepts, f" of task '{cfg['name']}'"))
    splits = {}
    for split in SPLITS:
        spec = dict(cfg.get("splits", {}).get(split) or {})
        items = _split_items(spec, concepts, concept, split, reads)
        if not items:
            raise ConfigError(f"Task '{cfg['name']}' has no prompts in split '{split}'.")
        splits[split] = tuple(spread(items, limit) if limit else items)
    return Task(
        name=str(cfg["name"]),
        concept=concept,
        concept_text=concepts[concept],
        kind=str((kind.get(concept, "") if isinstance(kind := cfg.get("kind", ""), Mapping) else kind) or ""),
        concepts=concepts,
        splits=splits,
        evaluators={str(k): dict(v or {}) for k, v in dict(cfg.get("evaluators") or {}).items()},
        # ``anchor`` is one text, or concept key -> text (an object's parent class differs per object).
        anchor=str((anchor.get(concept, "") if isinstance(anchor := cfg.get("anchor"), Mapping) else anchor) or ""),
        anchor_prompts=tuple(str(p) for p in cfg.get("anchor_prompts") or ()),
        erase_prompt=str(cfg.get("erase_template") or "{concept}").format(concept=concepts[concept]),
    )
