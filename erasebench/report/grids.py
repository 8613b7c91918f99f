"""Image grids: rows are prompts (same image seed), columns are methods, one grid per (block, split).

Every run links its erased model's images as ``images/<split>/00000.png ...`` in the task's item order, so
image ``i`` shows the same prompt and seed for every method; the baseline column is the original model. Each
grid has a title (task, concept, split, run seed), method names over the columns (the report's one order)
and each row's prompt and image seed on its left, read from the run's ``per_image.csv``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from erasebench.report.plugins import method_name
from erasebench.report.summary import BLOCK, method_order

PROMPT_WIDTH = 170  # pixels of the prompt column


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def row_labels(run_dir: Path, split: str, indices: Sequence[int]) -> list[str]:
    """``prompt (seed s)`` of the images ``indices`` of a split, from the run's ``per_image.csv`` (``image i``
    where it has none)."""
    path = Path(run_dir) / "per_image.csv"
    known: dict[int, str] = {}
    if path.is_file():
        rows = pd.read_csv(path, keep_default_na=False, dtype={"prompt": str, "image_seed": str})
        rows = rows[(rows["split"] == split) & (rows["prompt"] != "")].drop_duplicates("index")
        known = {int(r.index): f"{r.prompt} (seed {r.image_seed})" for r in rows.itertuples(index=False)}
    return [known.get(i, f"image {i}") for i in indices]


def grid_image(columns: Sequence[tuple[str, Sequence[Path]]], labels: Sequence[str], title: str,
               cell: int = 96, pad: int = 4) -> Image.Image:
    """Lay out images: a title, one column per (method, image paths) under its name, a prompt per row."""
    rows = max(len(paths) for _, paths in columns)
    title_h, header_h = 24, 30
    width = PROMPT_WIDTH + len(columns) * (cell + pad) + pad
    height = title_h + header_h + rows * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title, fill="black", font=_font(14))
    small = _font(11)
    for c, (label, paths) in enumerate(columns):
        x = PROMPT_WIDTH + pad + c * (cell + pad)
        for k, line in enumerate(textwrap.wrap(label, width=max(4, cell // 7))[:2]):
            draw.text((x + 2, title_h + k * 13), line, fill="black", font=small)
        for r, path in enumerate(paths):
            # nearest-neighbour keeps tiny (32 px) toy images crisp when enlarged
            img = Image.open(path).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(img, (x, title_h + header_h + r * (cell + pad)))
    for r, text in enumerate(labels[:rows]):
        y = title_h + header_h + r * (cell + pad)
        for k, line in enumerate(textwrap.wrap(text, width=PROMPT_WIDTH // 7)[:6]):
            draw.text((pad, y + 2 + k * 13), line, fill=(50, 50, 50), font=small)
    return canvas


def make_grids(df: pd.DataFrame, out_dir: Path, n: int = 6, cell: int = 96, order: tuple[str, ...] = ()) -> list[Path]:
    """Write one grid PNG per (model, task, concept, split) from the runs behind ``df``.

    Args:
        df: The collected rows (needs ``run_dir``); the lowest seed of each method is shown.
        out_dir: Where the PNGs go.
        n: Images (rows) per grid, spread over the split.
        cell: Pixel size of each image.
        order: The sweep's method order.

    Returns:
        The written paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    runs = df.sort_values("seed").drop_duplicates([*BLOCK, "method"])
    methods = method_order(df["method"], order)
    for blk, group in runs.groupby(BLOCK, sort=False):
        for split in sorted(df["split"].unique()):
            columns, first = [], None
            for method in (m for m in methods if m in set(group["method"])):
                run = group[group["method"] == method].iloc[0]
                every = sorted((Path(run["run_dir"]) / "images" / split).glob("*.png"))
                picked = every[:: max(1, len(every) // n)][:n]  # spread over the split's prompts
                if picked:
                    columns.append((method_name(method), picked))
                    first = first or (Path(run["run_dir"]), [int(p.stem) for p in picked], int(run["seed"]))
            if columns and first:
                model, task, concept = map(str, blk)
                title = f"{task} / {concept}: {split} split ({model}, run seed {first[2]})"
                path = out_dir / f"grid_{'_'.join(map(str, blk))}_{split}.png"
                grid_image(columns, row_labels(first[0], split, first[1]), title, cell).save(path)
                written.append(path)
    return written
