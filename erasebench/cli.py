"""The ``erasebench`` command: a Hydra app over ``conf/``.

``erasebench method=esd task=toy_object`` runs one job; ``erasebench -m method=esd,sdd seed=0,1`` sweeps;
``erasebench -m experiment=<file>`` runs a sweep saved in ``conf/experiment/``. Errors the user can fix
print one paragraph and exit with status 2.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from erasebench.errors import ErasebenchError

#: Entry-point group through which a third-party package adds its own YAML (a package holding conf groups).
CONF_GROUP = "erasebench.conf"
log = logging.getLogger("erasebench")


@hydra.main(version_base="1.3", config_path="pkg://erasebench.conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from erasebench import runner

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        runner.run(plain, run_dir)  # type: ignore[arg-type]
    except ErasebenchError as exc:
        # SystemExit passes through Hydra's job runner, so a bad input stops a sweep with one paragraph.
        print(f"erasebench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _yaml_names(package: str, group: str) -> set[str]:
    try:
        folder = resources.files(package) / group
        return {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return set()


def _add_third_party_conf(argv: list[str]) -> list[str]:
    """Put third-party conf packages on Hydra's search path and give YAML-less plugins a default node."""
    from hydra.core.config_store import ConfigStore

    packages = [ep.value for ep in entry_points(group=CONF_GROUP)]
    store = ConfigStore.instance()
    for group, ep_group in (("method", "erasebench.methods"), ("evaluator", "erasebench.evaluators")):
        have = set().union(*(_yaml_names(p, group) for p in ["erasebench.conf", *packages]))
        for ep in entry_points(group=ep_group):
            if ep.name not in have:  # `method=foo` then means foo with its paper defaults
                store.store(group=group, name=ep.name, node={"name": ep.name})
    if not packages:
        return argv
    extra = ",".join(f"pkg://{p}" for p in packages)
    for i, arg in enumerate(argv):
        if arg.startswith("hydra.searchpath=["):
            argv[i] = arg.rstrip("]") + ("," if arg.rstrip("]")[-1] != "[" else "") + extra + "]"
            return argv
    return [*argv, f"hydra.searchpath=[{extra}]"]


def main() -> None:
    """Console entry point."""
    sys.argv = [sys.argv[0], *_add_third_party_conf(sys.argv[1:])]
    _app()


if __name__ == "__main__":
    main()
