"""A run's erased tensors: the tensors a method changed, saved as safetensors, checked before they load back.

``<run>/erased/tensors.safetensors`` holds only the changed tensors (``component.name`` keys) and
``meta.json`` what made them (method, settings, task, seed, model fingerprint, the method hash). A run killed
during evaluation loads them back instead of erasing again, but only when the method hash matches and every
tensor's name, shape and dtype fit the pipeline; a damaged file is quarantined and the method runs again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from erasebench.errors import CorruptFileError
from erasebench.results import atomic_path, atomic_write_text, inputs_unchanged, quarantine


def save_erased(pipe: Any, before: Mapping[str, str], run_dir: Path, meta: Mapping[str, Any]) -> list[str]:
    """Save the tensors whose digest changed since ``before`` as ``erased/tensors.safetensors``.

    Returns:
        The names (``component.tensor``) of the changed tensors.
    """
    from safetensors.torch import save_file

    from erasebench.generate import weight_digests

    after = weight_digests(pipe)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    tensors = {}
    for key in changed:
        component, name = key.split(".", 1)
        tensors[key] = getattr(pipe, component).state_dict()[name].detach().to("cpu").contiguous()
    out = run_dir / "erased"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tensors.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(out / "meta.json", json.dumps({**meta, "changed": changed}, indent=1, default=str))
    return changed


def load_erased(pipe: Any, run_dir: Path, method_hash: str) -> bool:
    """Load a previous run's erased tensors into ``pipe`` if they were made with ``method_hash``.

    Every tensor is checked before the first one is loaded, so a bad file never leaves ``pipe`` half
    edited: the file must open as safetensors, every key must be ``component.name`` with ``component`` a
    module of ``pipe`` and ``name`` in its state dict, and every shape must match exactly. A floating
    tensor may differ in floating dtype from the pipeline's (``load_state_dict`` casts it; a run in another
    dtype has another model fingerprint, hence another method hash, anyway); any other dtype must match
    exactly. An unreadable ``meta.json`` or a bad tensors file is quarantined (see :func:`quarantine`).

    Returns:
        Whether the tensors were loaded (so erasure need not run again).
    """
    meta_path, tensor_path = run_dir / "erased" / "meta.json", run_dir / "erased" / "tensors.safetensors"
    if not (meta_path.exists() and tensor_path.exists()):
        return False
    meta = _read_meta(meta_path)
    # Data files the method read (e.g. S-GRACE's concept lists) count like its settings.
    if meta is None or meta.get("method_hash") != method_hash or not inputs_unchanged(meta.get("data_files", {})):
        return False
    by_component = _verified_tensors(pipe, tensor_path)
    if by_component is None:
        return False
    for component, state in by_component.items():
        module = getattr(pipe, component)
        ref = next(module.parameters())
        module.load_state_dict({k: v.to(ref.device) for k, v in state.items()}, strict=False)
    return True


def _read_meta(path: Path) -> dict[str, Any] | None:
    # The object in meta.json, or None (and the file quarantined) if it is not one.
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(meta, dict):
            return meta
        problem = "not a JSON object"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"not JSON ({e})"
    quarantine(path, problem)
    return None


def _verified_tensors(pipe: Any, path: Path) -> dict[str, dict[str, Any]] | None:
    # component -> {name: tensor} of a safetensors file that fits pipe, or None (and the file quarantined).
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            refs = _reference_tensors(pipe, list(f.keys()))
            for key, ref in refs.items():  # shapes come from the header: a bad file is caught before any read
                if (shape := tuple(f.get_slice(key).get_shape())) != tuple(ref.shape):
                    raise CorruptFileError(f"{key} has shape {list(shape)}, the pipeline's {list(ref.shape)}")
            out: dict[str, dict[str, Any]] = {}
            for key, ref in refs.items():
                t = f.get_tensor(key)
                if t.dtype != ref.dtype and not (t.dtype.is_floating_point and ref.dtype.is_floating_point):
                    raise CorruptFileError(f"{key} has dtype {t.dtype}, the pipeline's {ref.dtype}")
                component, name = key.split(".", 1)
                out.setdefault(component, {})[name] = t
    except (SafetensorError, CorruptFileError) as e:
        quarantine(path, str(e))
        return None
    return out


def _reference_tensors(pipe: Any, keys: Sequence[str]) -> dict[str, Any]:
    # key -> the pipeline's tensor it replaces; CorruptFileError for a key that names none.
    import torch

    states: dict[str, dict[str, Any]] = {}
    refs = {}
    for key in keys:
        component, _, name = key.partition(".")
        if component not in states:
            module = getattr(pipe, component, None) if component and not component.startswith("_") else None
            states[component] = module.state_dict() if isinstance(module, torch.nn.Module) else {}
        if name not in states[component]:
            raise CorruptFileError(f"{key!r} names no tensor of the pipeline")
        refs[key] = states[component][name]
    return refs
