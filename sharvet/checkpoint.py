"""Save and load compressed models: safetensors with every shared tensor stored once.

A checkpoint folder holds ``config.json`` (the model's config plus a ``sharvet`` section: method,
groups, ranks, settings), ``model.safetensors``, the tokenizer files and ``SUMMARY.md``. Tensors that
share storage (a group's basis, tied embeddings) are written once; the other names are recorded as
aliases in the safetensors metadata. Writing goes to a temporary folder renamed at the end, so an
interrupted run never leaves a folder that looks complete.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .models import adapter_for
from .install import install_plan
from .pipeline import plan_of

WEIGHTS = "model.safetensors"
FORMAT = "sharvet"


class CheckpointError(ValueError):
    """A folder that is not a (complete) sharvet checkpoint."""


def dedupe_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with one entry per storage, and ``alias -> canonical`` for the rest."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owner: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in owner:
            aliases[name] = owner[key]
        else:
            owner[key] = name
            tensors[name] = t.detach().cpu().contiguous()
    return tensors, aliases


def check_output(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty output folder unless overwriting (checked before any heavy work)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite to replace it)")
    return out


def save(model: nn.Module, out_dir: str | Path, *, tokenizer=None, summary: str = "", overwrite: bool = False) -> Path:
    out = check_output(out_dir, overwrite)
    plan_of(model)  # refuse to save something that is not a sharvet model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the finished checkpoint private to this user
    try:
        tensors, aliases = dedupe_state_dict(model)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "aliases": json.dumps(aliases)})
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "SUMMARY.md").write_text(summary)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} was not written by sharvet")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is damaged or unreadable: {e}") from e
    for alias, canonical in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[canonical]
    return tensors


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a compressed model: the original architecture with the planned modules swapped in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} is not a sharvet checkpoint (needs config.json and {WEIGHTS})")
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "sharvet", None) is None:
        raise CheckpointError(f"{folder} is not a sharvet checkpoint (config.json has no 'sharvet' section)")
    state = read_state_dict(folder / WEIGHTS)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype or torch.float32)
    install_plan(adapter_for(model), plan_of(model), lambda _g: None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: weights do not match the plan in config.json: {e}") from e
    if device is not None:
        model.to(device)
    return model.eval()


def require_checkpoint(path: str | Path) -> None:
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a sharvet checkpoint (no config.json with a sharvet section)")


def is_checkpoint(path: str | Path) -> bool:
    """A folder whose config.json carries a sharvet section (cheap check, no weights read)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "sharvet" in json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return False
