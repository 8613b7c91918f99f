"""``python -m erasebench.report``: the same as ``erasebench-report``."""

from erasebench.report.cli import main

main()
