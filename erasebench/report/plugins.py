"""What the plugins say about themselves, for reports: display names, provenance notes and settings texts.

Reports read results that may come from plugins this installation lacks (a colleague's third-party method);
every lookup then falls back on the name in the row, so a report never fails for want of a plugin.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from erasebench.api import Evaluator, Method
from erasebench.errors import ErasebenchError


@functools.cache
def _plugin(kind: str, name: str) -> type[Method | Evaluator] | None:
    """The registered class of a method or evaluator, or ``None`` when this installation lacks it."""
    from erasebench.registry import EVALUATORS, METHODS

    try:
        return (METHODS if kind == "method" else EVALUATORS).get(name)
    except (ErasebenchError, ValueError):
        return None


def _method(name: str) -> type[Method] | None:
    return _plugin("method", name)  # type: ignore[return-value]


def _evaluator(name: str) -> type[Evaluator] | None:
    return _plugin("evaluator", name)  # type: ignore[return-value]


def _base(key: str) -> tuple[str, str]:
    """``("uce", " (lamb=0.1)")`` from a variant ``uce (lamb=0.1)`` (see ``collect.split_variants``)."""
    base, sep, rest = key.partition(" (")
    return base, sep + rest


def method_name(key: str) -> str:
    """A method's display name (``All-but-one``; a variant keeps its settings: ``UCE (lamb=0.1)``), else its key."""
    base, variant = _base(key)
    cls = _method(base)
    return ((cls.display_name if cls else "") or base) + variant


def method_provenance(key: str, settings: str = "") -> str:
    """What a row's method settings say of its provenance (``reimplementation``), else what the plugin says."""
    try:
        said = json.loads(settings).get("reimplementation") if settings.startswith("{") else None
    except ValueError:
        said = None
    if said:
        return f"reimplementation {said}" if not str(said).startswith("reimplementation") else str(said)
    cls = _method(_base(key)[0])
    return cls.provenance if cls else ""


def evaluator_class(label: str) -> type[Evaluator] | None:
    """The plugin behind an evaluator label: the label itself, else its stem (``acc_i2p`` -> ``acc``)."""
    return _evaluator(label) or (_evaluator(label.split("_")[0]) if "_" in label else None)


def evaluator_name(label: str) -> str:
    """An evaluator's display name, else its label."""
    cls = _evaluator(label)
    return (cls.display_name if cls else "") or label


def evaluator_description(label: str, settings: str) -> str:
    """``<label> (<what its settings say>)`` for a table note."""
    cls = evaluator_class(label)
    try:
        parsed: Any = json.loads(settings)
    except ValueError:
        parsed = {}
    said = cls.describe(parsed) if cls and isinstance(parsed, dict) else ""
    return f"{label} ({said or 'default settings'})"
