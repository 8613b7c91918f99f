"""Image grids for reports: rows are prompts (same seed), columns are methods, one grid per split.

Every run links its erased model's images as ``images/<split>/00000.png ...`` in the task's item order, so
image ``i`` shows the same prompt and seed for every method; the ``none`` column is the original model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from erasebench.report import BLOCK, _ordered_methods


def grid_image(columns: Sequence[tuple[str, Sequence[Path]]], cell: int = 96, pad: int = 4) -> Image.Image:
    """Lay out images: one column per (label, image paths), a header row with the labels."""
    rows = max(len(paths) for _, paths in columns)
    header = 16
    width = len(columns) * (cell + pad) + pad
    height = header + rows * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, (label, paths) in enumerate(columns):
        x = pad + c * (cell + pad)
        draw.text((x + 2, 2), label[: cell // 6], fill="black", font=font)
        for r, path in enumerate(paths):
            # nearest-neighbour keeps tiny (32 px) toy images crisp when enlarged
            img = Image.open(path).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(img, (x, header + pad + r * (cell + pad)))
    return canvas


def make_grids(df: pd.DataFrame, out_dir: Path, n: int = 6, cell: int = 96) -> list[Path]:
    """Write one grid PNG per (model, task, concept, split) from the runs behind ``df``.

    Args:
        df: The collected rows (needs ``run_dir``); the lowest seed of each method is shown.
        out_dir: Where the PNGs go.
        n: Images (rows) per grid.
        cell: Pixel size of each cell.

    Returns:
        The written paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    runs = df.sort_values("seed").drop_duplicates([*BLOCK, "method"])
    for block, group in runs.groupby(BLOCK, sort=False):
        for split in sorted(df["split"].unique()):
            columns = []
            for method in _ordered_methods(group["method"]):
                run_dir = Path(group[group["method"] == method]["run_dir"].iloc[0])
                every = sorted((run_dir / "images" / split).glob("*.png"))
                paths = every[:: max(1, len(every) // n)][:n]  # spread over the split's prompts
                if paths:
                    columns.append((method, paths))
            if columns:
                path = out_dir / f"grid_{'_'.join(map(str, block))}_{split}.png"
                grid_image(columns, cell).save(path)
                written.append(path)
    return written
