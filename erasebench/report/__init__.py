"""``erasebench-report``: from run directories to tables, figures and one HTML page.

The modules form a one-way graph; none imports this package's ``__init__`` for anything, and none imports
a module that imports it back:

* :mod:`~erasebench.report.collect`: find, check and read every run's ``metrics.csv`` and ``per_image.csv``;
  list runs without results; every problem names its file.
* :mod:`~erasebench.report.summary` (<- collect's frames): means, spreads, intervals, the best method and
  paired significance tests per cell; metric parts and method order.
* :mod:`~erasebench.report.latex`: escaping, widths and the float around every table.
* :mod:`~erasebench.report.tables` (<- summary, latex): the summary table as Markdown, LaTeX and HTML cells.
* :mod:`~erasebench.report.paper` (<- summary, latex): the AdvAnchor paper layout, or methods as rows.
* :mod:`~erasebench.report.figures` (<- summary): NudeNet bars and the trade-off scatter.
* :mod:`~erasebench.report.grids` (<- summary): image grids with prompts and titles.
* :mod:`~erasebench.report.html`: the self-contained ``index.html``.
* :mod:`~erasebench.report.plugins`: what the plugins say about themselves (display names, notes).
* :mod:`~erasebench.report.cli` (<- all of them): ``report()`` and the console entry point.
"""
