"""SHA-256 sums of the toy weight files (``assets/SHA256SUMS``, ``sha256sum`` format)."""

from __future__ import annotations

import hashlib
from pathlib import Path

SUMS_FILE = "SHA256SUMS"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_files(assets_dir: str | Path) -> list[Path]:
    """All ``*.safetensors`` files under ``assets_dir`` (sorted, relative)."""
    root = Path(assets_dir)
    return sorted(p.relative_to(root) for p in root.rglob("*.safetensors"))


def write_checksums(assets_dir: str | Path) -> Path:
    """Write ``SHA256SUMS`` for every weight file; returns its path."""
    root = Path(assets_dir)
    lines = [f"{_sha256(root / rel)}  {rel.as_posix()}" for rel in weight_files(root)]
    out = root / SUMS_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


def verify_checksums(assets_dir: str | Path | None = None) -> list[str]:
    """Check every weight file against ``SHA256SUMS``.

    Args:
        assets_dir: Directory holding ``SHA256SUMS``; defaults to ``ASSETS_DIR``.

    Returns:
        Human-readable problems (empty list when everything matches). Weight
        files present on disk but not listed also count as problems.

    Raises:
        ToyAssetsMissingError: If ``SHA256SUMS`` does not exist.
    """
    from . import ASSETS_DIR, _require

    root = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    sums = _require(root / SUMS_FILE)
    problems: list[str] = []
    listed: set[str] = set()
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        rel = rel.lstrip("*")
        listed.add(rel)
        path = root / rel
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif _sha256(path) != digest:
            problems.append(f"checksum mismatch: {rel}")
    for rel_path in weight_files(root):
        if rel_path.as_posix() not in listed:
            problems.append(f"not listed in {SUMS_FILE}: {rel_path.as_posix()}")
    return problems
