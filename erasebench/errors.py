"""User-facing errors.

Everything the user can fix (a bad name, a bad setting, a missing file) raises a subclass of
:class:`ErasebenchError`. The command line prints its message as one paragraph and exits non-zero,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ErasebenchError(Exception):
    """An error caused by input the user can fix; its message says how."""


class UnknownNameError(ErasebenchError, KeyError):
    """A plugin, task, concept or setting name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ErasebenchError, ValueError):
    """A setting with a wrong type or value."""


class MissingFileError(ErasebenchError, FileNotFoundError):
    """A file the run needs (weights, prompts) is absent."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginLoadError(ErasebenchError, ImportError):
    """A selected third-party plugin failed to import."""


class CorruptFileError(ErasebenchError):
    """A file erasebench wrote earlier (a run's ``metrics.csv``, its erased tensors) is damaged: truncated,
    empty or not in the expected format; the message names the file and what is wrong."""


def unknown_name_message(kind: str, name: str, valid: Iterable[str], where: str = "") -> str:
    """Build the message for an unknown name: the valid names and the closest match.

    Args:
        kind: What was looked up, e.g. ``"method"`` or ``"setting"``.
        name: The name the user gave.
        valid: Every valid name.
        where: Whose names these are, e.g. ``" of method 'esd'"``.

    Returns:
        A one-paragraph message.
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'{where}.{hint} Valid {kind}s{where}: {', '.join(valid) or '(none)'}."
