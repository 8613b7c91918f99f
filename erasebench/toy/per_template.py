"""Per-phrasing ACC of a toy run's erase split: is the concept gone only in the words it was erased with?

    python -m erasebench.toy.per_template results/runs/toy_main/toy/toy_object/circle/{none,esd,advunlearn}/seed=0

Reads each run's ``.hydra/config.yaml`` and ``images/erase/*.png`` (written in the task's item order:
template by template, ``images_per_prompt`` seeds each), classifies the images with the toy classifier and
prints one Markdown row per run: the ACC on the phrase the method erased (``task.erase_template``) and on
each phrasing it never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from .classifier import ToyClassifier, load_classifier, predict


def per_template(run_dir: Path, clf: ToyClassifier) -> tuple[str, str | None, dict[str, float]]:
    """``(method, erased phrase, {template: acc})`` of one toy run's erase split."""
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra/config.yaml"), resolve=False)
    task = cfg["task"]  # type: ignore[index]
    spec = task["splits"]["erase"]
    n = int(spec.get("images_per_prompt", 1))
    templates = list(spec["templates"])
    files = sorted((run_dir / "images/erase").glob("*.png"))
    if len(files) != n * len(templates):
        raise SystemExit(f"{run_dir}: {len(files)} erase images, expected {n} x {len(templates)} templates")
    kind = task["kind"]
    names = list(clf.cfg.objects if kind == "object" else clf.cfg.styles)
    concept = cfg["concept"] if "${" not in str(cfg["concept"]) else task["default_concept"]  # type: ignore[index]
    target = names.index(task["concepts"][concept])
    obj, sty = predict(clf, [Image.open(f).convert("RGB") for f in files])
    hit = ((obj if kind == "object" else sty).numpy() == target).reshape(len(templates), n)
    acc = {t: float(h.mean()) for t, h in zip(templates, hit)}
    return str(cfg["method"]["name"]), task.get("erase_template"), acc  # type: ignore[index]


def main(argv: list[str] | None = None) -> None:
    """Print a Markdown table, one row per run directory."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    a = ap.parse_args(argv)
    clf = load_classifier()
    rows = [per_template(r, clf) for r in a.runs]
    templates = list(rows[0][2])
    print("| method | " + " | ".join(f"`{t}`" for t in templates) + " | mean of unseen phrasings |")
    print("|---" * (len(templates) + 2) + "|")
    for method, erased, acc in rows:
        unseen = [v for t, v in acc.items() if t != erased]
        print(f"| {method} | " + " | ".join(f"{acc[t]:.2f}" for t in templates) + f" | {np.mean(unseen):.2f} |")


if __name__ == "__main__":
    main()
