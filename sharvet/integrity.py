"""Integrity record of a checkpoint: the sha256 and size of every file that decides what the model computes.

``sharvet-checkpoint.json`` is written last, inside the temporary folder that becomes the checkpoint, and
lists ``config.json`` (the plan: groups, ranks), the weights, the tokenizer files and any LoRA adapters. Every
loader verifies it, so a damaged or edited file is refused with one line naming it, instead of loading into a
model that silently computes something else (random weights where the plan lost its section, NaN where bytes
were overwritten, a rank changed in ``config.json``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import CheckpointError

MANIFEST = "sharvet-checkpoint.json"
FORMAT = "sharvet-checkpoint"
FORMAT_VERSION = 1
_CHUNK = 1 << 22


class IntegrityError(CheckpointError):
    """A checkpoint file is missing, damaged or changed since it was written."""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _recorded_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` but the manifest and prose (``*.md``), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and p.suffix != ".md")


def write_manifest(folder: str | Path) -> Path:
    """Record the digest of every file now in ``folder`` (call once the folder is complete)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"sha256": file_digest(p), "bytes": p.stat().st_size}
             for p in _recorded_files(folder)}
    path = folder / MANIFEST
    path.write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}, indent=1) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's integrity record, or None for a checkpoint written before records existed."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is damaged ({e}); the checkpoint cannot be verified") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IntegrityError(f"{path} is not a sharvet integrity record")
    if record.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(f"{path} has format version {record.get('format_version')!r}; this sharvet reads "
                             f"version {FORMAT_VERSION} (upgrade sharvet)")
    return record


def verify(folder: str | Path) -> bool:
    """Check every recorded file's size and sha256; False when the folder has no record (older checkpoint).

    Raises :class:`IntegrityError` naming the first file that is missing or differs.
    """
    folder = Path(folder)
    record = read_manifest(folder)
    if record is None:
        return False
    for name, want in record["files"].items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing from the checkpoint (recorded in {MANIFEST})")
        if path.stat().st_size != want["bytes"] or file_digest(path) != want["sha256"]:
            raise IntegrityError(f"{path} is damaged or was changed after saving (sha256 differs from {MANIFEST}); "
                                 "re-create the checkpoint, or pass --no-verify to load it anyway")
    return True
