"""Data files a run reads (prompt CSVs, concept lists), found and recorded per run.

The config hash sees a data file's name, not its contents, so a run stores the digest of every file it read
and is redone when one changes. The record belongs to the run (:attr:`erasebench.api.RunContext.reads`), not
to the process: two runs in one process never see each other's files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from erasebench.errors import MissingFileError


def resolve_data_path(path: str) -> Path:
    """Find a data file: as given, else inside the installed package's ``erasebench/data``.

    Raises:
        MissingFileError: The file exists in neither place.
    """
    p = Path(path).expanduser()
    if p.exists():
        return p
    packaged = resources.files("erasebench") / "data" / path
    if packaged.is_file():
        return Path(str(packaged))
    raise MissingFileError(
        f"Data file '{path}' not found (looked at '{p.resolve()}' and in erasebench/data/). "
        "Fix the setting that names it or put the file there."
    )


class DataReads:
    """The data files one run resolved, in order (absolute paths)."""

    def __init__(self) -> None:
        self._paths: dict[str, None] = {}

    def resolve(self, path: str) -> Path:
        """:func:`resolve_data_path`, recording the file."""
        found = resolve_data_path(path)
        self._paths[str(found.resolve())] = None
        return found

    def paths(self) -> list[str]:
        """Every recorded file, in the order first read."""
        return list(self._paths)

    def since(self, mark: int) -> list[str]:
        """The files first read after :meth:`paths` had ``mark`` entries (what one stage read)."""
        return self.paths()[mark:]

    def __len__(self) -> int:
        return len(self._paths)
