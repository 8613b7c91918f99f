"""Advisory file locks: one process at a time runs a given run directory or renders a given cache entry.

``fcntl.flock`` locks are released by the kernel when the holder exits, even when it is killed, so a crashed
job never leaves a stale lock behind. They work between processes of one machine and on shared filesystems
that support them (most NFS v4 and Lustre setups; see the README for clusters).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("erasebench")


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], str] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    Args:
        path: The lock file.
        on_wait: Called once if another process holds the lock; its text is logged before waiting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                log.info(on_wait())
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
