"""The sweeper of ``erasebench -m``: Hydra's basic sweep, checked as a whole first, summarised at the end.

Its config is ``erasebench/conf/hydra/sweeper/erasebench.yaml``. Hydra only accepts plugins from the
``hydra_plugins`` namespace, so the class lives here; the work is in :func:`erasebench.sweep.run_sweep`.
This module stays light: Hydra imports it whenever it scans for plugins.
"""

from typing import Any, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ErasebenchSweeper(BasicSweeper):
    """Checks every job before the first starts; one failing job never stops the others."""

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006 (Hydra's signature)
        """Run the sweep (see :func:`erasebench.sweep.run_sweep`)."""
        from erasebench.sweep import run_sweep

        return run_sweep(self, arguments)
