"""A test evaluator: the mean and spread of pixel values of each split's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from erasebench.api import Evaluator, RunContext, Task
from erasebench.registry import register_evaluator


@register_evaluator("dummy")
class PixelStats(Evaluator):
    """Mean brightness (0-1) and pixel standard deviation of the generated images, per split."""

    higher_is_better = {"brightness": True, "pixel_std": True}

    @dataclass
    class Config:
        """Settings.

        Attributes:
            channel: ``-1`` for all channels, else 0, 1 or 2 (R, G, B).
        """

        channel: int = -1

    def evaluate(self, pipe: Any, task: Task, run: RunContext) -> dict[str, dict[str, float]]:
        """Generate each split's images and summarise their pixels."""
        out = {}
        for split, items in task.splits.items():
            arr = np.stack([np.asarray(img, dtype=np.float64) / 255.0 for img in run.generate(pipe, items)])
            if self.config.channel >= 0:
                arr = arr[..., self.config.channel]
            out[split] = {"brightness": float(arr.mean()), "pixel_std": float(arr.std())}
        return out
