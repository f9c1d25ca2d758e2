"""Training checkpoints without pickle: every tensor in safetensors, everything else in JSON.

A checkpoint is a folder ``<output>/checkpoints/step-NNNNNNNN`` holding

* ``vectors.safetensors`` / ``initial.safetensors``: the trainable tensors now and before training (the
  L2 term measures the distance to the latter, so a resumed run needs them too);
* ``optimizer.*`` and ``scheduler.*``: their state dicts split by :func:`save_tree`;
* ``rng-rank<R>.*``: torch CPU and CUDA generators, Python ``random`` and NumPy, one file per process;
* ``state.json``: the data position and a fingerprint of everything that shapes the trajectory.

Folders are written under a ``.partial`` name and renamed at the end, so a crash while saving never
leaves a folder that looks complete; older checkpoints are removed once a newer one is in place.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STATE = "state.json"
_PREFIX = "step-"


@dataclass
class DataPosition:
    """Where the data stream stands after ``step`` optimizer steps."""

    step: int
    epoch: int
    #: micro-batches of ``epoch`` already consumed (always a whole number of optimizer steps)
    micro: int
    #: seed of ``epoch``'s permutation (``seed + epoch``; stored so a reader need not know the rule)
    permutation_seed: int


# --- nested state dicts <-> (tensors, JSON) -------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):  # keys may be ints (optimizer state): keep their type, hence pairs
        return {"__dict__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj


def save_tree(obj: Any, folder: Path, name: str) -> None:
    """Write a nested structure of dicts/lists/tuples/tensors/scalars as ``name.safetensors`` + ``name.json``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, tensors, name)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(folder: Path, name: str) -> Any:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _decode(json.loads((folder / f"{name}.json").read_text()), tensors)


# --- random number generators ---------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from (dropout, LoRA init, user code)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# --- checkpoint folders -----------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most steps, or None."""
    root = Path(output_dir) / CHECKPOINTS
    done = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name[len(_PREFIX):]), default=None)


def partial_folder(output_dir: str | Path, step: int) -> Path:
    """The folder every process writes into before :func:`publish` renames it."""
    return Path(output_dir) / CHECKPOINTS / f".{checkpoint_name(step)}.partial"


def publish(partial: Path, state: dict[str, Any]) -> Path:
    """Write ``state.json`` last, rename the folder into place and drop older checkpoints."""
    (partial / STATE).write_text(json.dumps(state, indent=1))
    final = partial.parent / partial.name[1:-len(".partial")]
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    stale = [*partial.parent.glob(f"{_PREFIX}*"), *partial.parent.glob(f".{_PREFIX}*.partial")]
    for old in stale:  # older checkpoints, and folders of saves that crashed half-way
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_vectors(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))


def read_vectors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"{name}.safetensors"))


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE).read_text())


def position_of(state: dict[str, Any]) -> DataPosition:
    return DataPosition(**state["position"])


def state_record(position: DataPosition, fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {"position": asdict(position), "fingerprint": fingerprint}
