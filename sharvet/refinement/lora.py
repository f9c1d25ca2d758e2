"""LoRA on the compressed model: the baseline of paper Figure 3 and of the SEQ / CYCLE / Basis Sharing / FiPS rows.

Installed peft knows nothing of :class:`SharedBasisLinear` or :class:`SparseProjectionLinear`, so we
register a custom LoRA layer for each through ``LoraConfig._register_custom_module`` (peft's experimental
custom-module API): peft's own LoRA ``Linear`` with the input/output sizes read from the module. Its
forward is peft's: ``base(x) + s B A dropout(x)``; whole shared matrices (SEQ / CYCLE) are plain
``nn.Linear`` modules peft handles natively. The targets are every module of the compression plan by
full name (the LM head and embeddings stay untouched); everything else stays frozen, only A and B train.

Adapters cannot be merged into the compressed structure: ``B A`` is a per-layer rank-``r_A`` term,
while the only per-layer low-rank factor, V, multiplies the *shared* basis (folding ``B A`` in would
need a per-layer basis, i.e. undo the sharing). So ``merge`` raises, and :func:`save_lora` stores the
compressed model as a normal sharvet checkpoint plus the adapters in ``<dir>/lora`` (peft's
``adapter_model.safetensors`` + ``adapter_config.json``); :func:`load_lora` puts both back together.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .. import checkpoint
from ..models import adapter_for
from ..modules import SharedBasisLinear, SparseProjectionLinear
from ..pipeline import plan_of
from .guard import require_finite

ADAPTER_DIR = checkpoint.ADAPTER_DIR


class SharedBasisLoraLinear(PeftLoraLinear):
    """peft's LoRA ``Linear`` wrapped around a :class:`SharedBasisLinear` or :class:`SparseProjectionLinear`."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "LoRA adapters cannot be merged into a shared low-rank basis; save them with save_lora()"
        )


def lora_config(target_modules: list[str], rank: int, alpha: float, dropout: float) -> LoraConfig:
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     bias="none", task_type="CAUSAL_LM")
    register_custom(cfg)
    return cfg


def register_custom(cfg: LoraConfig) -> None:
    cfg._register_custom_module({SharedBasisLinear: SharedBasisLoraLinear,
                                 SparseProjectionLinear: SharedBasisLoraLinear})


def compressed_module_names(model: nn.Module) -> list[str]:
    """Full names of every module the compression plan replaced (the LoRA targets)."""
    adapter = adapter_for(model)
    return [adapter.module_path(layer, t) for g in plan_of(model).groups for layer, t in g.members]


def attach_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> PeftModel:
    """Wrap ``model`` (in place) with LoRA adapters on every compressed module; only adapters train."""
    targets = compressed_module_names(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, lora_config(targets, rank, alpha, dropout))


def is_lora(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


class _BaseModules:
    """Temporarily put the wrapped modules back, so the base model saves as a plain sharvet checkpoint."""

    def __init__(self, model: PeftModel) -> None:
        self.base = model.get_base_model()
        self.swaps = [(name, m) for name, m in self.base.named_modules() if isinstance(m, LoraLayer)]

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.base.get_submodule(parent) if parent else self.base, child, module)

    def __enter__(self) -> nn.Module:
        for name, m in self.swaps:
            self._set(name, m.get_base_layer())
        return self.base

    def __exit__(self, *exc: Any) -> None:
        for name, m in self.swaps:
            self._set(name, m)


def save_lora(model: PeftModel, out_dir: str | Path, *, tokenizer=None, summary: str = "",
              overwrite: bool = False) -> Path:
    """A sharvet checkpoint of the compressed base plus the adapters in ``<out_dir>/lora`` (both under its
    integrity record, so a loader can never silently drop or mix them)."""
    require_finite(model.named_parameters(), "LoRA-refined model")
    with tempfile.TemporaryDirectory() as adapters:
        model.save_pretrained(adapters)  # before the swap: peft reads the adapters from the module tree
        with _BaseModules(model) as base:
            return checkpoint.save(base, out_dir, tokenizer=tokenizer, summary=summary, overwrite=overwrite,
                                   extras=lambda tmp: shutil.copytree(adapters, tmp / ADAPTER_DIR))


def load_lora(path: str | Path, *, device=None, dtype=None, verify: bool = True) -> PeftModel:
    """Inverse of :func:`save_lora` (the custom module must be registered again: peft does not store it)."""
    folder = Path(path)
    base = checkpoint.load(folder, device=device, dtype=dtype, verify=verify)
    cfg = LoraConfig.from_pretrained(str(folder / ADAPTER_DIR))
    register_custom(cfg)
    return PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR), config=cfg).eval()
