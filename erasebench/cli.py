"""The ``erasebench`` command: a Hydra app over ``conf/``.

``erasebench method=esd task=toy_object`` runs one job; ``erasebench -m method=esd,sdd seed=0,1`` sweeps;
``erasebench -m experiment=<file>`` runs a sweep saved in ``conf/experiment/``. Errors the user can fix
print one paragraph and exit with status 2.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from erasebench.configs import conf_packages, conf_yaml, yaml_names
from erasebench.errors import ErasebenchError, unknown_name_message

#: Config groups whose options are checked before Hydra starts, for a short message with the closest name.
GROUPS = ("model", "method", "task", "experiment", "paths")
#: Launchers live in optional Hydra plugins: ``hydra/launcher=<name>`` -> (plugin module, pip extra).
LAUNCHERS = {
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray_gpus": ("hydra_plugins.hydra_ray_launcher", "multigpu"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "multigpu"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
}


@hydra.main(version_base="1.3", config_path="pkg://erasebench.conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from erasebench import runner

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        metrics = runner.run(plain, run_dir)  # type: ignore[arg-type]
        print(runner.summary_table(metrics))
    except ErasebenchError as exc:
        # SystemExit passes through Hydra's job runner, so a bad input stops a sweep with one paragraph.
        print(f"erasebench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_group_options(argv: list[str], options: dict[str, set[str]]) -> None:
    """Fail early, in one line, on ``group=option`` overrides that name no config file."""
    for arg in argv:
        group, _, value = arg.partition("=")
        if group not in options or "(" in value or not value:  # glob(...), range(...): Hydra expands them
            continue
        for option in value.split(","):
            if option not in options[group] and option != "null":
                print(f"erasebench: error: {unknown_name_message(group, option, options[group])}", file=sys.stderr)
                raise SystemExit(2)


def _check_launcher(argv: list[str]) -> None:
    """A launcher whose Hydra plugin is not installed: say which package to install (Hydra's own error does not)."""
    from importlib.util import find_spec

    for arg in argv:
        key, _, name = arg.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and name in LAUNCHERS:
            module, extra = LAUNCHERS[name]
            try:
                missing = find_spec(module) is None
            except ModuleNotFoundError:  # not even the hydra_plugins namespace
                missing = True
            if missing:
                fix = f'pip install -e ".[{extra}]"' if "-" not in extra else f"pip install {extra}"
                print(f"erasebench: error: hydra/launcher={name} needs the Hydra plugin {module.split('.')[-1]}, "
                      f"which is not installed. Install it with: {fix}", file=sys.stderr)
                raise SystemExit(2)


def _add_third_party_conf(argv: list[str]) -> list[str]:
    """Put third-party conf packages on Hydra's search path and give YAML-less plugins a default node."""
    from hydra.core.config_store import ConfigStore

    packages = conf_packages()[1:]
    options = {g: yaml_names(g) for g in GROUPS}
    store = ConfigStore.instance()
    for ep in entry_points(group="erasebench.methods"):
        if ep.name not in options["method"]:  # `method=foo` then means foo with its paper defaults
            store.store(group="method", name=ep.name, node={"name": ep.name})
            options["method"].add(ep.name)
    _check_group_options(argv, options)
    _check_launcher(argv)
    if not packages:
        return argv
    extra = ",".join(f"pkg://{p}" for p in packages)
    for i, arg in enumerate(argv):
        if arg.startswith("hydra.searchpath=["):
            argv[i] = arg.rstrip("]") + ("," if arg.rstrip("]")[-1] != "[" else "") + extra + "]"
            return argv
    return [*argv, f"hydra.searchpath=[{extra}]"]


def _expand_concept_all(argv: list[str]) -> list[str]:
    """``concept=all``: sweep every concept of the (single) task, so one command reproduces a whole table."""
    if "concept=all" not in argv:
        return argv
    tasks = [a.partition("=")[2] for a in argv if a.startswith("task=")] or ["toy_object"]
    if len(tasks) != 1 or "," in tasks[0]:
        print("erasebench: error: concept=all needs exactly one task (task=<name>); for several tasks use a "
              "saved sweep (experiment=...).", file=sys.stderr)
        raise SystemExit(2)
    task = conf_yaml("task", tasks[0])
    if task is not None:
        keys = ",".join(str(k) for k in task["concepts"])
        out = [f"concept={keys}" if a == "concept=all" else a for a in argv]
        return out if {"-m", "--multirun"} & set(out) else ["--multirun", *out]
    return argv  # an unknown task: the option check names the valid ones


def main() -> None:
    """Console entry point."""
    sys.argv = [sys.argv[0], *_add_third_party_conf(_expand_concept_all(sys.argv[1:]))]
    _app()


if __name__ == "__main__":
    main()
