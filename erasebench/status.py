"""A run's ``status.json``: queued, running, done or failed, and for a failure the error and its traceback.

``metrics.csv`` alone marks a run finished (it is written last, atomically); ``status.json`` tells the
report and the user what happened to runs that did not finish: one killed mid-run still says ``running``
with the host and pid that ran it, one that raised says ``failed`` with the error and ``traceback.txt``.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from erasebench.results import atomic_write_text

STATES = ("queued", "running", "done", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    """Write ``status.json`` (state, time, host, pid and ``extra``), atomically."""
    assert state in STATES, state
    record = {"status": state, "at": _now(), "host": socket.gethostname(), "pid": os.getpid(), **extra}
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(record, indent=1, default=str))


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status record, or ``{}`` when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_failure(run_dir: Path, exc: BaseException, config_hash: str = "") -> Path:
    """Record a failed run: ``traceback.txt`` with the full traceback, ``status.json`` with the error.

    Returns:
        The path of ``traceback.txt``.
    """
    path = Path(run_dir) / "traceback.txt"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    atomic_write_text(path, text)
    error = f"{type(exc).__name__}: {exc}".strip() or type(exc).__name__
    write_status(run_dir, "failed", error=error, traceback=str(path), config_hash=config_hash)
    return path
