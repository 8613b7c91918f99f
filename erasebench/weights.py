"""External weight files the evaluators (and pretrained models) need, where they live, and how to fetch them.

Compute nodes are often offline, so no evaluator ever lets a library download on its own: it asks
:func:`require` (a ``torch.hub`` checkpoint) or :func:`require_hf` (a Hugging Face snapshot) for the local
path first, and a missing file raises :class:`~erasebench.errors.MissingFileError` naming the file, the
cache path it was looked for in, and the command that fetches it::

    erasebench-fetch --evaluators fid,lpips --model sd14     # (same as: python -m erasebench.weights ...)
    erasebench-fetch --all
    erasebench-fetch --check --all                           # list what is present / missing

Files go to the standard caches, so the libraries find them too: ``torch.hub`` checkpoints in
``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``; ``TORCH_HOME`` defaults to ``~/.cache/torch``),
Hugging Face repositories in the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``). Fetch on a machine with
internet, then copy those folders (or point the variables at a shared disk).

URLs and file names follow ``/work/shared/reference/eval-protocol.md`` §3-§6 (torchvision 0.29 weight
enums, torch-fidelity 0.4.0 ``URL_INCEPTION_V3``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from erasebench.errors import ConfigError, MissingFileError, UnknownNameError, unknown_name_message

#: The command that fetches weights (a console script once installed; ``python -m erasebench.weights`` always).
FETCH_COMMAND = "erasebench-fetch"
FETCH_MODULE = "python -m erasebench.weights"


@dataclass(frozen=True)
class WeightFile:
    """One external weight file or repository.

    Attributes:
        key: Short identifier, recorded in evaluator settings as the weights id.
        description: What it is.
        source: ``"torch_hub"`` (a single file under ``<torch hub dir>/checkpoints``) or ``"hf"`` (a
            Hugging Face repository in the hub cache).
        used_by: ``"evaluator:backend"`` entries that need it.
        url: Download URL (``torch_hub``).
        filename: File name in the checkpoints folder (``torch_hub``).
        sha256_prefix: Leading hex digits of the file's SHA-256, checked on download where known.
        repo_id: Hugging Face repository id (``hf``).
        revision: Hugging Face revision, ``None`` for the default branch.
    """

    key: str
    description: str
    source: str
    used_by: tuple[str, ...]
    url: str = ""
    filename: str = ""
    sha256_prefix: str = ""
    repo_id: str = ""
    revision: str | None = None


# torchvision's file names end in the first 8 hex digits of the SHA-256 (torch.hub's convention), so the
# download is verified. torch-fidelity's Inception file name carries a hash suffix too, but I could not
# verify what it hashes, so that download is not checked.
WEIGHTS: dict[str, WeightFile] = {
    w.key: w
    for w in (
        WeightFile(
            key="inception_v3_tf_2015_12_05",
            description="TF-ported Inception-v3 (FID/KID features), torch-fidelity 0.4.0",
            source="torch_hub",
            url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            filename="weights-inception-2015-12-05-6726825d.pth",
            used_by=("fid:inception",),
        ),
        WeightFile(
            key="alexnet_imagenet1k_v1",
            description="torchvision AlexNet IMAGENET1K_V1 (LPIPS backbone)",
            source="torch_hub",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            filename="alexnet-owt-7be5be79.pth",
            sha256_prefix="7be5be79",
            used_by=("lpips:alex",),
        ),
        WeightFile(
            key="resnet50_imagenet1k_v1",
            description="torchvision ResNet-50 IMAGENET1K_V1 (object accuracy, as AdvAnchor)",
            source="torch_hub",
            url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            filename="resnet50-0676ba61.pth",
            sha256_prefix="0676ba61",
            used_by=("acc:imagenet_resnet50",),
        ),
        WeightFile(
            key="resnet18_imagenet1k_v1",
            description="torchvision ResNet-18 IMAGENET1K_V1 (backbone of the trained style / I2P classifiers)",
            source="torch_hub",
            url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            filename="resnet18-f37072fd.pth",
            sha256_prefix="f37072fd",
            used_by=("acc:style", "acc:i2p"),
        ),
        WeightFile(
            key="openai/clip-vit-base-patch32",
            description="OpenAI CLIP ViT-B/32 (CLIP score as MACE/UCE/AdvUnlearn)",
            source="hf",
            repo_id="openai/clip-vit-base-patch32",
            used_by=("clip_score:openai/clip-vit-base-patch32",),
        ),
        WeightFile(
            key="openai/clip-vit-large-patch14",
            description="OpenAI CLIP ViT-L/14 (CLIP score as torchmetrics' default / UnlearnDiffAtk)",
            source="hf",
            repo_id="openai/clip-vit-large-patch14",
            used_by=("clip_score:openai/clip-vit-large-patch14", "method:sgrace"),  # S-GRACE: its text projection
        ),
    )
}

#: Evaluators that need no download (bundled or built in), for ``--check`` messages.
NO_DOWNLOAD = {
    "nudenet": "NudeNet 3.x ships its 320n ONNX detector inside the wheel",
    "fid:toy": "toy classifier ships in erasebench/toy/assets",
    "acc:toy": "toy classifier ships in erasebench/toy/assets",
}

# Only these files of a Hugging Face repository are fetched: configs, tokenizer files and weights, without
# the TensorFlow / Flax / ONNX duplicates.
HF_ALLOW = ["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"]
HF_IGNORE = ["*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "*.onnx"]


def torch_hub_checkpoints() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``, read now (so ``TORCH_HOME`` changes are honoured)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache() -> Path:
    """The Hugging Face hub cache directory."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def get(key: str) -> WeightFile:
    """The table entry for ``key``.

    Raises:
        UnknownNameError: No such weight file.
    """
    if key not in WEIGHTS:
        raise UnknownNameError(unknown_name_message("weight file", key, WEIGHTS))
    return WEIGHTS[key]


def cache_path(key: str) -> Path:
    """Where ``key`` is (or would be) cached: the checkpoint file, or the repo folder of the HF cache."""
    w = get(key)
    if w.source == "torch_hub":
        return torch_hub_checkpoints() / w.filename
    return hf_cache() / f"models--{w.repo_id.replace('/', '--')}"


def fetch_command(selection: str) -> str:
    """The fetch command line for a selection such as ``"--evaluators fid"``."""
    return f"`{FETCH_COMMAND} {selection}` (or `{FETCH_MODULE} {selection}`)"


def _selection_for(key: str) -> str:
    evaluators = sorted({u.partition(":")[0] for u in get(key).used_by})
    return f"--evaluators {','.join(evaluators)}"


def hf_snapshot(repo_id: str, revision: str | None = None,
                weight_files: Sequence[str] = ("model.safetensors", "pytorch_model.bin")) -> Path | None:
    """The local snapshot folder of a cached HF repo holding ``config.json`` and one weight file, else ``None``.

    Only the local cache is read (no network).
    """
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    if any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in weight_files):
        return Path(config).parent
    return None


def is_present(key: str) -> bool:
    """Whether ``key`` is in its local cache."""
    w = get(key)
    if w.source == "torch_hub":
        return cache_path(key).is_file()
    return hf_snapshot(w.repo_id, w.revision) is not None


def missing_message(key: str, needed_by: str = "") -> str:
    """The message of a missing weight: the file, where it was looked for, and how to fetch it."""
    w = get(key)
    who = f" needed by {needed_by}" if needed_by else ""
    if w.source == "torch_hub":
        what = f"Weight file '{w.filename}' ({w.description}){who} is not in the torch.hub cache: '{cache_path(key)}'"
        where = ("it into that folder on this machine (or set TORCH_HOME so that $TORCH_HOME/hub/checkpoints "
                 "holds it)")
        origin = f" Source: {w.url}."
    else:
        what = (f"Hugging Face repository '{w.repo_id}' ({w.description}){who} is not in the Hugging Face cache: "
                f"'{cache_path(key)}'")
        where = "that cache folder to this machine (or set HF_HOME / HF_HUB_CACHE to a copy)"
        origin = ""
    return (f"{what}, and erasebench never downloads during a run.{origin} On a machine with internet run "
            f"{fetch_command(_selection_for(key))}, then copy {where}.")


def require(key: str, needed_by: str = "") -> Path:
    """The local path of a ``torch_hub`` weight file, checked before any library could try to download it.

    Args:
        key: Key in :data:`WEIGHTS`.
        needed_by: Who needs it, for the message (e.g. ``"evaluator 'fid' (backend inception)"``).

    Raises:
        MissingFileError: The file is not cached; the message names the file, the path and the fetch command.
    """
    path = cache_path(key)
    if get(key).source != "torch_hub":
        raise ConfigError(f"'{key}' is a Hugging Face repository; use require_hf()")
    if not path.is_file():
        raise MissingFileError(missing_message(key, needed_by))
    return path


def require_hf(key: str, needed_by: str = "") -> Path:
    """The local snapshot folder of a Hugging Face weight repository (no network).

    Raises:
        MissingFileError: Not in the hub cache; the message names the repository, the cache and the fetch command.
    """
    w = get(key)
    snap = hf_snapshot(w.repo_id, w.revision)
    if snap is None:
        raise MissingFileError(missing_message(key, needed_by))
    return snap


def keys_for(evaluators: Iterable[str]) -> list[str]:
    """Weight keys an evaluator selection needs.

    Args:
        evaluators: Names such as ``"fid"`` (every backend of it) or ``"fid:inception"`` (one backend).

    Raises:
        UnknownNameError: A name matches no entry (and is not one that needs no download).
    """
    out: list[str] = []
    known = sorted({u for w in WEIGHTS.values() for u in w.used_by} | set(NO_DOWNLOAD))
    for sel in evaluators:
        sel = sel.strip()
        name, _, backend = sel.partition(":")
        hits = [w.key for w in WEIGHTS.values()
                if any(u.partition(":")[0] == name and backend in ("", u.partition(":")[2]) for u in w.used_by)]
        valid = sel in NO_DOWNLOAD or (not backend and any(k.partition(":")[0] == name for k in known))
        if not hits and not valid:
            names = {k.partition(":")[0] for k in known}
            raise UnknownNameError(unknown_name_message("evaluator selection", sel, sorted(names | set(known))))
        out += [h for h in hits if h not in out]
    return out


def model_repo(model: str) -> tuple[str, str | None] | None:
    """``(hub_id, revision)`` of ``conf/model/<model>.yaml``, or ``None`` for models that need no download.

    Raises:
        UnknownNameError: No such model config.
    """
    from importlib import resources

    from omegaconf import OmegaConf

    from erasebench.configs import yaml_names

    names = yaml_names("model")
    if model not in names:
        raise UnknownNameError(unknown_name_message("model", model, names))
    node = OmegaConf.to_container(OmegaConf.create((resources.files("erasebench.conf") / "model" /
                                                    f"{model}.yaml").read_text()), resolve=False)
    assert isinstance(node, dict)
    if node.get("source") != "pretrained" or node.get("path") or not node.get("hub_id"):
        return None
    return str(node["hub_id"]), node.get("revision")


def model_present(hub_id: str, revision: str | None = None) -> bool:
    """Whether a diffusers pipeline's index and UNet weights are in the HF cache (local check only)."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(hub_id, "model_index.json", revision=revision), str):
        return False
    unet = ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(hub_id, f, revision=revision), str) for f in unet)


def fetch(key: str) -> Path:
    """Download ``key`` into its standard cache (no-op when present) and return its local path."""
    w = get(key)
    if is_present(key):
        return cache_path(key) if w.source == "torch_hub" else require_hf(key)
    if w.source == "torch_hub":
        from torch.hub import download_url_to_file

        dst = cache_path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(w.url, str(dst), hash_prefix=w.sha256_prefix or None, progress=True)
        return dst
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(w.repo_id, revision=w.revision, allow_patterns=HF_ALLOW,
                                  ignore_patterns=HF_IGNORE))


def fetch_model(hub_id: str, revision: str | None = None) -> Path:
    """Download the files a diffusers pipeline loads (diffusers picks them, e.g. safetensors over .bin)."""
    from diffusers import DiffusionPipeline

    return Path(DiffusionPipeline.download(hub_id, revision=revision))


def _split(arg: str | None) -> list[str]:
    return [s.strip() for s in (arg or "").split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``erasebench-fetch``: download (or ``--check``) the weights a selection of evaluators and models needs.

    Returns:
        0 on success; 1 when ``--check`` finds something missing; 2 on a bad selection.
    """
    parser = argparse.ArgumentParser(prog=FETCH_COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--evaluators", help="comma-separated evaluators, optionally name:backend "
                        "(e.g. fid,lpips or acc:imagenet_resnet50)")
    parser.add_argument("--model", help="comma-separated model configs (conf/model/*.yaml), e.g. sd14")
    parser.add_argument("--all", action="store_true", help="every evaluator weight (models only with --model)")
    parser.add_argument("--check", action="store_true", help="only list what is present or missing")
    parser.add_argument("--list", action="store_true", help="print the weight table and exit")
    args = parser.parse_args(argv)

    if args.list:
        for w in WEIGHTS.values():
            origin = w.url or f"hf:{w.repo_id}"
            print(f"{w.key}\t{', '.join(w.used_by)}\t{origin}\t{cache_path(w.key)}")
        for name, why in NO_DOWNLOAD.items():
            print(f"-\t{name}\t(no download: {why})")
        return 0
    try:
        keys = list(WEIGHTS) if args.all else keys_for(_split(args.evaluators))
        models = [(m, model_repo(m)) for m in _split(args.model)]
    except (UnknownNameError, ConfigError) as exc:
        print(f"{FETCH_COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    if not keys and not models:
        parser.print_usage(sys.stderr)
        print(f"{FETCH_COMMAND}: error: select --evaluators, --model or --all", file=sys.stderr)
        return 2

    missing = 0
    for key in keys:
        if args.check:
            ok = is_present(key)
            missing += not ok
            print(f"{'present' if ok else 'MISSING'}\t{key}\t{cache_path(key)}")
        else:
            print(f"{key}: {fetch(key)}")
    for name, repo in models:
        if repo is None:
            print(f"{'present' if args.check else 'nothing to fetch'}\tmodel {name} (built in or a local path)")
            continue
        if args.check:
            ok = model_present(*repo)
            missing += not ok
            print(f"{'present' if ok else 'MISSING'}\tmodel {name} ({repo[0]})\t{hf_cache()}")
        else:
            print(f"model {name}: {fetch_model(*repo)}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
