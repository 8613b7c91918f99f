"""A test method: scales every cross-attention value projection. It erases nothing on purpose.

It exists so that tests and smoke sweeps have a second method that changes weights quickly and
deterministically; ``sleep_s`` makes it slow enough to kill a sweep in the middle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from erasebench.api import Method, RunContext, Task
from erasebench.registry import register_method


@register_method("dummy")
class DummyMethod(Method):
    """Multiply ``attn2.to_v.weight`` by ``scale``."""

    display_name = "Dummy"

    @dataclass
    class Config:
        """Settings.

        Attributes:
            scale: Factor applied to the cross-attention value weights.
            sleep_s: Seconds to wait before returning (for resume tests).
        """

        scale: float = 0.5
        sleep_s: float = 0.0

    def trained_tensors(self, pipe: Any, task: Task) -> set[str]:
        """Every cross-attention value weight."""
        return {f"unet.{n}.to_v.weight" for n, _ in pipe.unet.named_modules() if n.endswith("attn2")}

    @torch.no_grad()
    def erase(self, pipe: Any, task: Task, run: RunContext) -> Any:
        """Scale the value projections of every ``attn2`` block."""
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.to_v.weight.mul_(self.config.scale)
        time.sleep(self.config.sleep_s)
        return pipe
