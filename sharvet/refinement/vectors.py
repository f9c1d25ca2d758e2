"""Which parameters refinement trains: the per-layer vectors lambda (``scale``) and sigma of eq. 12.

Everything else (the shared bases U, the per-layer V, embeddings, norms, LM head) stays frozen, so a
module trains ``r + d_in`` numbers instead of LoRA's ``r_A (d_in + d_out)`` (paper Table 1).
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ..accounting import unique_parameters
from ..modules import SharedBasisLinear

#: mode -> attribute names of SharedBasisLinear that train (paper Appendix G.3: both, Lambda only, Sigma only)
VECTOR_MODES: dict[str, tuple[str, ...]] = {
    "both": ("scale", "sigma"),
    "lambda": ("scale",),
    "sigma": ("sigma",),
}


def shared_basis_modules(model: nn.Module) -> list[tuple[str, SharedBasisLinear]]:
    """Every compressed linear module with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SharedBasisLinear)]


def mark_trainable(model: nn.Module, mode: str = "both") -> list[nn.Parameter]:
    """Freeze the whole model, then unfreeze lambda and/or sigma of every SharedBasisLinear.

    Returns the trainable parameters in module order (a stable order, which resuming an optimizer needs).
    Raises if the model has no such vector: a model compressed without sigma/scale (or already finalised)
    would otherwise "train" nothing and silently return the untuned model.
    """
    if mode not in VECTOR_MODES:
        raise ValueError(f"unknown refinement mode {mode!r}; choose from {', '.join(VECTOR_MODES)}")
    modules = shared_basis_modules(model)
    if not modules:
        raise ValueError("the model has no SharedBasisLinear modules: compress it with sharvet first")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for attr in VECTOR_MODES[mode]:
        vectors = [getattr(m, attr) for _, m in modules]
        if any(v is None for v in vectors):
            what = "lambda (scale)" if attr == "scale" else "sigma"
            raise ValueError(
                f"refinement mode {mode!r} trains {what}, but the model has no {what} vectors "
                f"(it was compressed without them or already finalised); recompress with that layout"
            )
        trainable += vectors
    for p in trainable:
        p.requires_grad_(True)
    return trainable


class ParameterSummary(NamedTuple):
    """Trainable and total parameters, counted by storage (a shared basis counts once)."""

    trainable: int
    total: int

    def line(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"trainable parameters {self.trainable:,} of {self.total:,} ({share:.4f}%)"


def parameter_summary(model: nn.Module) -> ParameterSummary:
    """Paper Table 1 accounting for a whole model: unique storages, so shared bases count once."""
    params = unique_parameters(model)
    return ParameterSummary(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
