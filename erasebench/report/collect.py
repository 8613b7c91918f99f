"""Find, check and read the results under a directory; list the runs that have none.

Every ``metrics.csv`` is checked (:func:`erasebench.results.read_metrics`: complete, in the schema) and then
row by row (integer seeds and counts, a direction, no duplicate key). A file that fails is left out; a
non-finite value is left out alone; each is a :class:`Problems` entry that names the file, the run and the
metric, printed as a warning, and with ``--strict`` a failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from erasebench.errors import CorruptFileError, ErasebenchError
from erasebench.report.plugins import evaluator_class
from erasebench.results import KEY, OPTIONAL, PER_IMAGE_COLUMNS, SETTINGS, read_metrics
from erasebench.status import read_status

#: Settings that must agree within a column of a table (method settings differ between methods by design).
COMPARED = [c for c in SETTINGS if c != "method_settings"]


@dataclass
class Problems:
    """What was wrong with the input: printed as warnings as they are found, a failure in strict mode."""

    strict: bool = False
    found: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record and print one problem."""
        self.found.append(message)
        print(f"erasebench-report: warning: {message}", file=sys.stderr)

    def check(self) -> None:
        """In strict mode, raise if anything was wrong.

        Raises:
            ErasebenchError: ``strict`` and at least one problem.
        """
        if self.strict and self.found:
            listed = "; ".join(self.found[:10]) + (f"; and {len(self.found) - 10} more" if len(self.found) > 10 else "")
            raise ErasebenchError(f"--strict: {len(self.found)} problem(s) in the results: {listed}. Fix or remove "
                                  "those files (or rerun those runs), or drop --strict to report without them.")


def metrics_files(runs_dir: Path, out: Path | None = None) -> list[Path]:
    """Every ``metrics.csv`` under ``runs_dir`` except those inside the report's own output folder ``out``."""
    skip = Path(out).resolve() if out else None
    files = sorted(Path(runs_dir).rglob("metrics.csv"))
    return [f for f in files if skip is None or not f.resolve().is_relative_to(skip)]


def _row_problems(frame: pd.DataFrame, path: Path) -> str | None:
    """The first thing wrong with a parsed file's rows, or ``None``."""
    for col in ("seed", "n"):
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = frame[col][numbers.isna() | (numbers % 1 != 0)]
        if len(bad):
            return f"its column '{col}' holds {bad.iloc[0]!r}, not an integer"
    for col in KEY:
        if frame[col].isna().any():
            return f"its column '{col}' is empty in row {int(frame[col].isna().to_numpy().argmax()) + 1}"
    directions = frame["higher_is_better"].map(lambda v: str(v).lower())
    if not directions.isin(["true", "false", "nan", "none", ""]).all():
        return f"its column 'higher_is_better' holds {frame['higher_is_better'][~directions.isin(['true', 'false'])].iloc[0]!r}"
    if frame.duplicated(KEY).any():
        return f"it holds the key {dict(zip(KEY, frame[frame.duplicated(KEY)].iloc[0][KEY]))} twice"
    return None


def read_run(path: Path, problems: Problems) -> pd.DataFrame | None:
    """One run's rows, checked; ``None`` (and a problem) if the file is unusable. Non-finite values are dropped."""
    try:
        frame = read_metrics(path)
    except CorruptFileError as exc:
        problems.warn(f"left out {path}: {exc}")
        return None
    problem = _row_problems(frame, path)
    if problem:
        problems.warn(f"left out the metrics file '{path}': {problem}.")
        return None
    bad = ~np.isfinite(frame["value"].to_numpy(dtype=float))
    for r in frame[bad].itertuples(index=False):
        problems.warn(f"left out {r.evaluator}/{r.split}/{r.metric} = {r.value} of the run '{path.parent}' (not a "
                      "finite number; the table counts the seeds that have one)")
    frame = frame[~bad].astype({"seed": int, "n": int})
    return frame.assign(run_dir=str(path.parent))


def fill_metadata(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of files written before metric metadata existed get it from the evaluator plugin (per split)."""
    df = df.reindex(columns=[*df.columns, *(c for c in OPTIONAL if c not in df.columns)])
    for col in ("ci_low", "ci_high"):
        df[col] = df[col].astype(float)
    for col in ("higher_is_better", "metric_display", "unit", "aggregate", "ci_method"):
        df[col] = df[col].astype(object)
    missing = df["metric_display"].isna() | (df["metric_display"].astype(str) == "")
    for (evaluator, split, metric), idx in df[missing].groupby(["evaluator", "split", "metric"]).groups.items():
        cls = evaluator_class(str(evaluator))
        if cls is not None and metric in cls.higher_is_better:
            info = cls.metric_info(str(split), str(metric))
            for col, value in (("higher_is_better", info.higher_is_better), ("metric_display", info.display or metric),
                               ("unit", info.unit), ("aggregate", info.aggregate())):
                df.loc[idx, col] = value
        else:  # a plugin this installation lacks: the row's own direction stands
            df.loc[idx, "metric_display"] = metric
    df["unit"] = df["unit"].fillna("")
    df["aggregate"] = df["aggregate"].fillna("")
    df["ci_method"] = df["ci_method"].fillna("no CI (written before intervals existed)")
    return df


def check_settings(df: pd.DataFrame) -> None:
    """Refuse rows of one column that differ in a setting that changes the number (method settings aside).

    Raises:
        ErasebenchError: Naming the column, the setting and the values.
    """
    for key, group in df.groupby(["model", "task", "concept", "evaluator", "metric"]):
        for col in COMPARED:
            values = group[col].map(str).unique()
            if len(values) > 1:
                raise ErasebenchError(
                    f"Results for {dict(zip(['model', 'task', 'concept', 'evaluator', 'metric'], key))} differ in "
                    f"'{col}' ({' vs '.join(values[:3])}); report them from separate directories."
                )


def collect(runs_dir: Path, out: Path | None = None, problems: Problems | None = None) -> pd.DataFrame:
    """Read every valid ``metrics.csv`` under ``runs_dir`` (not under ``out``) into one frame, the latest row per key.

    Args:
        runs_dir: Where the runs are.
        out: The report's output folder, whose files are never read as results.
        problems: Collects what was left out and why (a fresh, non-strict one if ``None``).

    Raises:
        ErasebenchError: No results, or rows that would be merged across different settings.
    """
    df = read_runs(metrics_files(runs_dir, out), problems)
    if df.empty:
        missing = unfinished(Path(runs_dir))
        runs = "; ".join(f"{r.status}: {r.run_dir}" + (f" ({r.error})" if r.error else "")
                         for r in missing.head(5).itertuples(index=False))
        hint = f" {len(missing)} runs there have no results: {runs}." if len(missing) else ""
        raise ErasebenchError(f"No readable metrics.csv under '{runs_dir}'.{hint} Run `erasebench` first "
                              "(see README).")
    check_settings(df)
    return df


def read_runs(files: Sequence[Path], problems: Problems | None = None) -> pd.DataFrame:
    """The checked rows of these ``metrics.csv`` files as the report uses them: the latest row per key and
    settings, metadata filled in, variants split, concept names added (empty when no file is usable).

    Settings are not compared across runs here; :func:`check_settings` does that.
    """
    problems = problems if problems is not None else Problems()
    frames = [f for f in (read_run(p, problems) for p in files) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    # A rerun with the same settings replaces its older rows; rows that differ in a setting both stay, and
    # check_settings refuses them rather than keeping one silently.
    df = df.sort_values("finished_at", kind="stable").drop_duplicates(KEY + SETTINGS, keep="last")
    df = split_variants(fill_metadata(df.reset_index(drop=True)))
    return df.assign(concept_text=concept_texts(df))


def split_variants(df: pd.DataFrame) -> pd.DataFrame:
    """A method run with several settings in one block (a sweep over ``methods.uce.lamb``) becomes one method
    per setting, named by what differs (``uce (lamb=0.1)``), so its variants are compared, never averaged
    together. Settings that differ between tasks (toy presets per task) are no variants."""
    df = df.copy()
    for (*_, method), group in df.groupby(["model", "task", "concept", "method"], sort=False):
        variants = group["method_settings"].astype(str).unique()
        if len(variants) < 2:
            continue
        parsed = {v: _settings(v) for v in variants}
        keys = sorted({k for p in parsed.values() for k in p})
        differ = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in parsed.values()}) > 1]
        for text, settings in parsed.items():
            label = ", ".join(f"{k}={settings.get(k)}" for k in differ) or text[:40]
            df.loc[group.index[group["method_settings"].astype(str) == text], "method"] = f"{method} ({label})"
    return df


def _settings(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def concept_texts(df: pd.DataFrame) -> list[str]:
    """Each row's concept as its task names it (``Van Gogh`` for ``van_gogh``), from the run's saved config
    (``.hydra/config.yaml``); the key where that is missing."""
    found: dict[tuple[str, str], str] = {}
    for run in df.drop_duplicates(["task", "concept"]).itertuples(index=False):
        text = str(run.concept)
        try:
            cfg = yaml.safe_load((Path(run.run_dir) / ".hydra" / "config.yaml").read_text()) or {}
            text = str((cfg.get("task", {}).get("concepts") or {}).get(run.concept) or text)
        except (OSError, yaml.YAMLError, AttributeError):
            pass
        found[run.task, run.concept] = text
    return [found[t, c] for t, c in zip(df["task"], df["concept"], strict=True)]


def per_image(df: pd.DataFrame, problems: Problems | None = None) -> pd.DataFrame:
    """The ``per_image.csv`` rows of every run behind ``df`` (with its key columns), for paired tests.

    A run without the file (made before per-image values existed) contributes nothing; a damaged one is a problem.
    """
    problems = problems if problems is not None else Problems()
    runs = df.drop_duplicates("run_dir")[["run_dir", "model", "task", "concept", "method", "seed"]]
    frames = []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / "per_image.csv"
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"prompt": str})
            if missing := [c for c in PER_IMAGE_COLUMNS if c not in frame.columns]:
                raise ValueError(f"no column(s) {', '.join(missing)}")
            frame["value"] = frame["value"].astype(float)
        except (ValueError, pd.errors.ParserError) as exc:
            problems.warn(f"left out the per-image file '{path}' ({exc}); its run gets no paired test")
            continue
        frames.append(frame.assign(model=run.model, task=run.task, concept=run.concept, method=run.method,
                                   seed=run.seed))
    cols = ["model", "task", "concept", "method", "seed", *PER_IMAGE_COLUMNS]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def unfinished(runs_dir: Path) -> pd.DataFrame:
    """Runs under ``runs_dir`` without valid results: failed, queued, running or killed, or unreadable.

    A run directory is one with ``status.json`` (every run since status files exist has one); its results
    count only through a ``metrics.csv`` that :func:`erasebench.results.read_metrics` accepts.
    """
    rows = []
    for status_file in sorted(Path(runs_dir).rglob("status.json")):
        run_dir, record = status_file.parent, read_status(status_file.parent)
        metrics = run_dir / "metrics.csv"
        if metrics.exists():
            try:
                read_metrics(metrics)
                continue
            except CorruptFileError as exc:
                record = {"status": "unreadable", "error": str(exc)}
        state = record.get("status", "unknown")
        if state == "running":
            state = "running or killed"  # a killed job cannot update its status
        rows.append({"run_dir": str(run_dir), "status": state, "error": record.get("error", ""),
                     "traceback": record.get("traceback", ""), "at": record.get("at", "")})
    return pd.DataFrame(rows, columns=["run_dir", "status", "error", "traceback", "at"])
