"""Output paths checked before the work: a run that cannot write its result fails in its first second.

Every command that writes (a checkpoint folder, a JSON file, a plot) checks the path with these helpers
before any model is loaded, by actually creating a probe file where the output will go, so a read-only
mount, ``/proc``, or a path through an existing file is one clear line instead of a lost compression.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

PARTIAL = ".partial-"


class OutputError(ValueError):
    """An output path that cannot be written."""


def _probe_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and parents) and a probe file in it; raise :class:`OutputError` if either fails."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{what}: {parent} is an existing file, not a folder")
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sharvet-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def check_output(out_dir: str | Path, overwrite: bool, flag: str = "--output") -> Path:
    """A checkpoint folder that can be written: absent, empty, or replaced with ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is an existing file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{flag} {out} exists and is not empty (use --overwrite to replace it)")
    _probe_folder(out.parent, f"{flag} {out}")
    return out


def check_output_file(path: str | Path | None, flag: str) -> Path | None:
    """A file path that can be written (its folder is created); an existing file will be replaced."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path} exists and is not writable")
    _probe_folder(path.parent, f"{flag} {path}")
    return path


def partial_folder(out: Path) -> Path:
    """A fresh temporary folder beside ``out``, renamed to ``out`` once complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the finished checkpoint private to this user
    return tmp


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the temporary folders an earlier killed save of ``out`` left, saying so in one line each."""
    stale = sorted(out.parent.glob(f".{out.name}{PARTIAL}*")) if out.parent.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"sharvet: removed {folder}, left by an earlier interrupted save", file=sys.stderr)
    return stale


def save_whole(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written under a name of this process's own and renamed when complete, so a file that
    exists is whole, even when several processes fill the same cache at once (the last rename wins)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
