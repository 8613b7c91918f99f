"""The unmodified model: the baseline every erasure method is compared with."""

from __future__ import annotations

from typing import Any

from erasebench.api import Method, RunContext, Task
from erasebench.registry import register_method


@register_method("none")
class NoErasure(Method):
    """Identity: returns the pipeline untouched."""

    display_name = "None (original)"

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """Nothing: the original model."""
        return set()

    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Return ``pipe`` unchanged."""
        return pipe
