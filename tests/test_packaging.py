"""A non-editable install puts methods/, evaluators/ and conf/ inside the erasebench package, and runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli, run_dir_of


def test_wheel_layout_and_run_from_installed_copy(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(REPO)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    top = {p.name for p in site.iterdir()}
    assert "erasebench" in top and not {"methods", "evaluators", "conf"} & top
    pkg = site / "erasebench"
    for rel in ("methods/none.py", "evaluators/dummy.py", "conf/config.yaml", "conf/model/tiny.yaml",
                "conf/hydra/default.yaml", "conf/experiment/smoke_sweep.yaml"):
        assert (pkg / rel).is_file(), rel
    # run from a directory that is not the clone, importing the installed copy
    probe = subprocess.run([sys.executable, "-c", "import erasebench.cli, erasebench.methods.none as m; print(m.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.startswith(str(site)), probe.stderr
    proc = run_cli(["method=dummy", "limit=2"], tmp_path, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    assert (run_dir_of(tmp_path / "runs/adhoc/tiny/smoke/cat/dummy") / "metrics.csv").exists()
