"""A test evaluator: the mean and spread of pixel values of each split's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from erasebench.api import Evaluator, MetricInfo, RunContext, Score, Task
from erasebench.registry import register_evaluator


@register_evaluator("dummy")
class PixelStats(Evaluator):
    """Mean brightness (0-1) and pixel standard deviation of the generated images, per split."""

    higher_is_better = {"brightness": True, "pixel_std": True}
    metrics = {("*", "brightness"): MetricInfo(True, "brightness"),
               ("*", "pixel_std"): MetricInfo(True, "pixel std", per_image="")}  # a spread over all images at once

    @dataclass
    class Config:
        """Settings.

        Attributes:
            channel: ``-1`` for all channels, else 0, 1 or 2 (R, G, B).
        """

        channel: int = -1

    def evaluate(self, pipe: Any, task: Task, run: RunContext) -> dict[str, dict[str, float | Score]]:
        """Generate each split's images and summarise their pixels."""
        out = {}
        for split, items in task.splits.items():
            arr = np.stack([np.asarray(img, dtype=np.float64) / 255.0 for img in run.generate(pipe, items)])
            if self.config.channel >= 0:
                arr = arr[..., self.config.channel]
            # Images of one size: the mean brightness is the mean of the images' own (the per-image values).
            each = tuple(float(a.mean()) for a in arr)
            out[split] = {"brightness": Score(float(arr.mean()), len(arr), each), "pixel_std": float(arr.std())}
        return out
