"""The README's promises: its two first-screen commands, CI running the test command, and the plugin example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli, run_dir_of

README = (REPO / "README.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)


def test_first_screen_has_install_run_and_test_commands() -> None:
    first = _blocks()[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].startswith('pip install -e ".[test]" && erasebench ')
    assert first[1].startswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _blocks()[0].strip().splitlines()[1].split("#")[0].strip()
    assert test_command in (REPO / ".ci/run").read_text()


def test_plugin_example_installs_and_runs(tmp_path: Path) -> None:
    for block in _blocks():
        match = re.match(r"# file: (\S+)\n", block)
        if match:
            path = tmp_path / match.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block[match.end():])
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(tmp_path / "my-erasure")], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    proc = run_cli(["method=mute"], tmp_path, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((run_dir_of(tmp_path / "runs/adhoc/tiny/smoke/cat/mute") / "erased/meta.json").read_text())
    assert meta["settings"] == {"strength": 0.8}  # the value from the plugin's own YAML
    assert meta["changed"] and all("attn2.to_v" in k for k in meta["changed"])


def test_every_paper_sweep_has_its_command_and_every_picture_exists() -> None:
    section = README[README.index("## The paper tasks and tables"):README.index("## One GPU, eight GPUs")]
    for name in ("advanchor_table1", "advanchor_table2", "advanchor_table3", "nudity"):
        assert f"erasebench -m experiment={name} " in section
        assert (REPO / "conf" / "experiment" / f"{name}_quick.yaml").is_file()
    for task in ("style", "object", "nudity", "i2p", "coco"):
        assert f"task={task}" in section
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO / picture).is_file(), picture
