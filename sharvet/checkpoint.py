"""Save and load compressed models: safetensors with every shared tensor stored once.

A checkpoint folder holds ``config.json`` (the model's config plus a ``sharvet`` section: method,
groups, ranks, settings), the weights, the tokenizer files and ``SUMMARY.md``. Tensors that share
storage (a group's basis, tied embeddings) are written once; the other names are recorded as aliases.
A model up to ``max_shard_bytes`` (5 GB) is one ``model.safetensors``, the aliases in its metadata; a
larger one is split as Hugging Face splits models, ``model-00001-of-0000N.safetensors`` plus
``model.safetensors.index.json`` whose ``weight_map`` names each stored tensor's shard and whose
``metadata`` is what the single file's would be (``format``; ``aliases``, a JSON string) plus
``total_size``; each shard's own metadata holds ``format`` only. Every reader accepts both layouts. Writing goes to a temporary folder renamed at the end, so an
interrupted run never leaves a folder that looks complete (the next save of the same folder removes what a
killed one left). ``sharvet-checkpoint.json`` records every file's sha256 (:mod:`sharvet.integrity`), and
loading verifies it; a model with non-finite weights is never written. ``modeling_sharvet.py`` and the
``auto_map`` in ``config.json`` (:mod:`sharvet.export`) let plain transformers load the folder with
``trust_remote_code=True``, without sharvet.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError, NonFiniteError, non_finite_names
from .export import write_remote_code
from .install import install_plan
from .integrity import MANIFEST, write_manifest
from .integrity import verify as verify_files
from .models import adapter_for
from .outputs import check_output, partial_folder, remove_stale_partials
from .pipeline import plan_of

WEIGHTS = "model.safetensors"
#: the index of a sharded checkpoint (Hugging Face's name and layout, so transformers reads it too)
INDEX = "model.safetensors.index.json"
#: Hugging Face's default: files the Hub and its downloads handle, and a bounded host copy while saving
MAX_SHARD_BYTES = 5 * 10**9
FORMAT = "sharvet"
#: LoRA adapters of a checkpoint refined with LoRA (peft's files)
ADAPTER_DIR = "lora"


def dedupe_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with one entry per storage, and ``alias -> canonical`` for the rest.

    The tensors are the model's own (no copy): :func:`write_weights` copies them to the host one shard at a time.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owner: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in owner:
            aliases[name] = owner[key]
        else:
            owner[key] = name
            tensors[name] = t
    return tensors, aliases


def save(model: nn.Module, out_dir: str | Path, *, tokenizer=None, summary: str = "", overwrite: bool = False,
         extras: Callable[[Path], None] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``model`` as a checkpoint folder; ``extras(folder)`` adds files (e.g. LoRA adapters) before it is sealed.

    Refuses a model with non-finite weights. Weights over ``max_shard_bytes`` are split into shards. The folder
    is assembled under a temporary name, its integrity record written last, and only then renamed into place.
    """
    out = check_output(out_dir, overwrite)
    plan_of(model)  # refuse to save something that is not a sharvet model
    if hasattr(model, "sharvet_inference"):  # sigma absorbed, ranks padded, modules regrouped: not the plan's layout
        raise ValueError("this model is in its inference form (sharvet.inference.prepare), which does not load back "
                         "as a checkpoint: save the model as loaded or refined, before prepare")
    tensors, aliases = dedupe_state_dict(model)
    check_finite(tensors, f"the model to be saved in {out}")
    remove_stale_partials(out)
    tmp = partial_folder(out)
    try:
        write_weights(tmp, tensors, aliases, max_shard_bytes)
        model.config.dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())  # what is stored
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extras is not None:
            extras(tmp)
        (tmp / "SUMMARY.md").write_text(summary)
        write_remote_code(tmp, model)
        write_manifest(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_weights(folder: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str],
                  max_shard_bytes: int) -> None:
    """``model.safetensors``, or shards of at most ``max_shard_bytes`` (a larger tensor alone) and their index.

    Each shard is copied to the host and written on its own, so saving a model from the GPU never holds more
    than one shard of it in host memory.
    """
    split = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda t: t.nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=max_shard_bytes)
    metadata = {"format": FORMAT, "aliases": json.dumps(aliases)}
    for file, names in split.filename_to_tensors.items():
        shard = {name: tensors[name].detach().cpu().contiguous() for name in names}
        save_file(shard, str(folder / file), metadata={"format": FORMAT} if split.is_sharded else metadata)
        del shard  # before the next one is built
    if split.is_sharded:
        index = {"metadata": {**split.metadata, **metadata}, "weight_map": split.tensor_to_filename}
        (folder / INDEX).write_text(json.dumps(index, indent=1) + "\n")


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse NaN / Inf weights: a diverged model must never replace a good checkpoint."""
    bad = non_finite_names(tensors.items())
    if bad:
        raise NonFiniteError(f"{what} has non-finite values in {len(bad)} of {len(tensors)} tensors "
                             f"(first: {bad[0]}); nothing was written")


def read_config(folder: Path) -> dict:
    """``config.json`` (which must exist) as a dict, with one clear line when it is damaged."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is damaged: not a JSON object")
    return config


def verify_checkpoint(folder: str | Path, *, verify: bool = True) -> dict:
    """The folder's config after checking it is a complete, unchanged sharvet checkpoint.

    With ``verify`` every file recorded at save time is checked against its sha256. A folder with a record but
    no ``sharvet`` section in its config was edited after saving, and is refused like any damaged file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a sharvet checkpoint (no config.json)")
    if verify:
        verify_files(folder)
    config = read_config(folder)
    if "sharvet" not in config:
        raise CheckpointError(f"{folder} is not a sharvet checkpoint (config.json has no 'sharvet' section)")
    if not weights_file(folder).is_file():
        raise CheckpointError(f"{folder} is not a complete sharvet checkpoint (no {WEIGHTS} or {INDEX})")
    for file in by_file(weight_layout(folder)[0]):
        if not (folder / file).is_file():
            raise CheckpointError(f"{folder / file} is missing from the checkpoint (named in {INDEX})")
    return config


def weights_file(folder: Path) -> Path:
    """``model.safetensors``, else the shards' index (transformers' preference too, where both exist)."""
    single = folder / WEIGHTS
    return folder / INDEX if not single.is_file() and (folder / INDEX).is_file() else single


def weight_layout(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``stored name -> file`` and ``alias -> stored name`` of either layout, from headers only (no tensor read).

    Raises one line naming the weight file or index that is damaged or was not written by sharvet.
    """
    path = weights_file(folder)
    try:
        if path.name == INDEX:
            index = json.loads(path.read_text())
            meta, files = index["metadata"], index["weight_map"]
        else:
            with safe_open(str(path), framework="pt") as f:
                meta, files = f.metadata() or {}, dict.fromkeys(f.keys(), WEIGHTS)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} was not written by sharvet")
        aliases = json.loads(meta.get("aliases", "{}"))
    except CheckpointError:
        raise
    except Exception as e:  # a damaged index (JSON, a missing key) or header (safetensors raises several types)
        raise CheckpointError(f"{path} is damaged or unreadable: {e}") from None
    if not set(aliases.values()) <= files.keys():
        raise CheckpointError(f"{path} is damaged: its aliases name tensors it does not store")
    return files, aliases


def by_file(files: dict[str, str]) -> dict[str, list[str]]:
    """``file -> the names it stores`` from ``name -> file``, so each file is opened once."""
    grouped: dict[str, list[str]] = {}
    for name, file in files.items():
        grouped.setdefault(file, []).append(name)
    return grouped


def skeleton(folder: Path, dtype: torch.dtype | None = None, *, empty: bool = False) -> nn.Module:
    """The checkpoint's architecture with the planned modules swapped in; ``empty``: its parameters on the meta
    device (nothing initialised, whatever the model's size; buffers such as rotary tables are computed)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype or torch.float32)
    # outside accelerate's patch, which would give every module its own copy of a shared basis
    install_plan(adapter_for(model), plan_of(model), lambda _g: None)
    return model


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         verify: bool = True) -> nn.Module:
    """Rebuild a compressed model: the original architecture with the planned modules swapped in.

    The skeleton is built on the meta device (nothing is initialised, whatever the model's size) and every
    tensor is read from the file straight onto ``device`` in the skeleton's dtype, so neither the host nor the
    device ever holds a second copy (an 8B model no longer random-initialises 8B weights on the CPU first).
    """
    folder = Path(path)
    verify_checkpoint(folder, verify=verify)
    model = skeleton(folder, dtype, empty=True)
    assign_weights(model, folder, torch.device(device) if device is not None else torch.device("cpu"))
    return model.eval()


def assign_weights(model: nn.Module, folder: Path, device: torch.device) -> None:
    """Every tensor of the weight files into the meta skeleton ``model``, read straight onto ``device``.

    A tensor stored once for several names (a group's basis, tied embeddings) becomes one new ``Parameter``
    set in every module holding one of those names, so sharing survives; an alias may live in another shard
    than its tensor. Each file is opened once. The files must cover the skeleton exactly, at the planned shapes.
    """
    places: list[tuple[nn.Module, str, str]] = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        for leaf, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is not None and leaf not in module._non_persistent_buffers_set:
                places.append((module, leaf, f"{prefix}.{leaf}" if prefix else leaf))
    files, aliases = weight_layout(folder)
    wrong = sorted({name for _, _, name in places} ^ (files.keys() | aliases.keys()))
    if wrong:
        raise CheckpointError(f"{folder}: weights do not match the plan in config.json ({len(wrong)} tensors "
                              f"missing or unexpected, e.g. {wrong[0]})")
    by_stored: dict[str, list[tuple[nn.Module, str, str]]] = {}
    for place in places:
        by_stored.setdefault(aliases.get(place[2], place[2]), []).append(place)
    for file, stored_names in by_file({stored: files[stored] for stored in by_stored}).items():
        path = folder / file
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                if (f.metadata() or {}).get("format") != FORMAT:
                    raise CheckpointError(f"{path} was not written by sharvet")
                for stored in stored_names:
                    _assign(f.get_tensor(stored), by_stored[stored], folder)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for a damaged or missing file
            raise CheckpointError(f"{path} is damaged or unreadable: {e}") from e
    model.to(device)  # the buffers the files do not hold (computed in the skeleton on the host)


def _assign(value: torch.Tensor, holders: list[tuple[nn.Module, str, str]], folder: Path) -> None:
    """``value`` as the one tensor of every ``(module, leaf, name)`` holding it, in the skeleton's dtype."""
    module, leaf, name = holders[0]
    old = getattr(module, leaf)
    if tuple(value.shape) != tuple(old.shape):
        raise CheckpointError(f"{folder}: weights do not match the plan in config.json ({name}: file "
                              f"{tuple(value.shape)}, plan {tuple(old.shape)})")
    is_param = isinstance(old, nn.Parameter)
    value = value.to(old.dtype)
    new = nn.Parameter(value, requires_grad=old.requires_grad) if is_param else value
    for holder, holder_leaf, _ in holders:
        getattr(holder, "_parameters" if is_param else "_buffers")[holder_leaf] = new


def check_shapes(folder: str | Path) -> None:
    """The weight files hold exactly the tensors the plan in config.json needs, at their shapes (no weights read).

    Built on the meta device, so it costs the same for a 135M and a 70B model; catches a plan edited after
    saving (a changed rank) in checkpoints written before integrity records existed.
    """
    folder = Path(folder)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in skeleton(folder).state_dict().items()}
    files, aliases = weight_layout(folder)
    have: dict[str, tuple | None] = {}
    for file, names in by_file(files).items():
        try:
            with safe_open(str(folder / file), framework="pt") as f:
                have.update({k: tuple(f.get_slice(k).get_shape()) for k in names})
        except Exception as e:  # safetensors raises several types for a damaged header
            raise CheckpointError(f"{folder / file} is damaged or unreadable: {e}") from None
    have.update({alias: have.get(canonical) for alias, canonical in aliases.items()})
    wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{weights_file(folder)} does not match the plan in config.json: {len(wrong)} tensors "
                              f"differ (e.g. {k}: file {have.get(k)}, plan {want.get(k)})")


def has_adapters(folder: str | Path) -> bool:
    """Whether the checkpoint carries LoRA adapters (``<folder>/lora``), which loaders must apply."""
    lora = Path(folder) / ADAPTER_DIR
    if lora.exists() and not (lora / "adapter_config.json").is_file():
        raise CheckpointError(f"{lora} holds no adapter_config.json: the LoRA adapters are damaged")
    return lora.exists()


def require_checkpoint(path: str | Path) -> None:
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a sharvet checkpoint (no config.json with a sharvet section)")


def is_checkpoint(path: str | Path) -> bool:
    """A folder sharvet wrote: a config with a sharvet section, or an integrity record, or sharvet weights.

    Cheap (no weights read). A folder that was a checkpoint but lost its config section still counts, so it is
    refused by :func:`load` instead of being read as an original model with random weights.
    """
    folder = Path(path)
    if not folder.is_dir():
        return False
    if (folder / MANIFEST).is_file():
        return True
    cfg = folder / "config.json"
    try:
        if cfg.is_file() and "sharvet" in json.loads(cfg.read_text()):
            return True
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return _written_by_sharvet(folder)


def _written_by_sharvet(folder: Path) -> bool:
    """Whether the folder's weights (either layout) carry sharvet's ``format`` mark."""
    try:
        weight_layout(folder)
    except CheckpointError:  # no weights, someone else's, or damaged: the loader reports the last
        return False
    return True
