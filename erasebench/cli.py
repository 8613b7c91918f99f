"""The ``erasebench`` command: a Hydra app over ``conf/``.

``erasebench method=esd task=toy_object`` runs one job; ``erasebench -m method=esd,sdd seed=0,1`` sweeps;
``erasebench -m experiment=<file>`` runs a sweep saved in ``conf/experiment/``;
``methods.<method>.<setting>=value`` sets a setting of one method of a sweep. Errors the user can fix print
one paragraph and exit with status 2, before anything runs: a single run's config is checked here before
Hydra creates its directory, a sweep's by erasebench's sweeper (:mod:`erasebench.sweep`).
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from erasebench.configs import conf_packages, conf_yaml, yaml_names
from erasebench.errors import ErasebenchError, unknown_name_message
from erasebench.plan import job_config, register_resolvers

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


register_resolvers()  # ${erasebench_run:}, the run directory, in every process that resolves a job's config


@hydra.main(version_base="1.3", config_path="pkg://erasebench.conf", config_name="config")
def _app(cfg: DictConfig) -> dict[str, Any]:
    """One job. In a sweep it returns its outcome (done, skipped or failed) rather than raising, so that
    the sweep goes on; a single run exits with 2 on bad input and keeps the traceback of anything else."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from erasebench import runner
    from erasebench.status import read_status

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        outcome = runner.run_job(OmegaConf.to_container(cfg, resolve=True), run_dir)  # type: ignore[arg-type]
    except Exception as exc:  # run_job has written status.json and traceback.txt
        record = read_status(run_dir)
        if in_sweep:
            return {"status": "failed", "run_dir": str(run_dir), "error": record.get("error", str(exc)),
                    "traceback": record.get("traceback")}
        if isinstance(exc, ErasebenchError):
            print(f"erasebench: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    print(runner.summary_table(outcome.metrics))
    return {"status": outcome.status, "run_dir": str(run_dir)}


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


def _scope_method_settings(argv: list[str]) -> list[str]:
    """``methods.<name>.<key>=v`` -> ``++methods.<name>.<key>=v``: Hydra adds keys to the empty ``methods``
    node only with ``++``, and the user should not have to know that."""
    return [f"++{a}" if a.startswith("methods.") and "=" in a else a for a in argv]


#: Hydra flags after which no job runs (help, printing the config, completion) or the config comes from
#: elsewhere: the single-run check is left to Hydra then.
_NO_CHECK = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
             "-p", "--package", "--resolve", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
             "--experimental-rerun"}


def _compose_or_exit(argv: list[str]) -> DictConfig:
    """Compose the config as Hydra will (a sweep's values left out), or print why it cannot be and exit 2."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from erasebench.sweep import composition_message

    given = [a for a in argv if not a.startswith("-")]
    try:
        base = [o.input_line for o in OverridesParser.create().parse_overrides(given) if not o.is_sweep_override()]
        with initialize_config_module(config_module="erasebench.conf", version_base="1.3"):
            return compose(config_name="config", overrides=base, return_hydra_config=True)
    except Exception as exc:  # Hydra's composition errors are several lines with a hint to a full trace
        sweep = bool({"-m", "--multirun"} & set(argv))
        print(f"erasebench: error: {composition_message(exc, sweep)} Nothing was started.", file=sys.stderr)
        raise SystemExit(2) from None


def _check_single_run(argv: list[str]) -> None:
    """Check the config before Hydra creates a run directory (each job of a sweep is checked by the sweeper)."""
    if any(a.split("=")[0] in _NO_CHECK for a in argv):
        return
    from hydra.types import RunMode

    from erasebench.jobs import prepare

    cfg = _compose_or_exit(argv)
    if cfg.hydra.mode == RunMode.MULTIRUN or {"-m", "--multirun"} & set(argv):
        return
    try:
        prepare(job_config(cfg))
    except ErasebenchError as exc:
        print(f"erasebench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _register_sweeper() -> None:
    """Make erasebench's sweeper known to Hydra. Hydra finds plugins by listing the ``hydra_plugins`` namespace,
    which misses packages installed in editable mode (``pip install -e``), so it is registered by hand."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: the scan re-executes Hydra's modules, the sweeper's base class with them
    from hydra_plugins.erasebench_sweeper.erasebench_sweeper import ErasebenchSweeper

    plugins.register(ErasebenchSweeper)


def main() -> None:
    """Console entry point."""
    _register_sweeper()
    argv = _add_third_party_conf(_scope_method_settings(_expand_concept_all(sys.argv[1:])))
    _check_single_run(argv)
    sys.argv = [sys.argv[0], *argv]
    _app()


if __name__ == "__main__":
    main()
