"""Which parameters refinement trains: the per-layer vectors lambda (``scale``) and sigma of eq. 12.

Everything else (the shared bases U, the per-layer V, embeddings, norms, LM head) stays frozen, so a
module trains ``r + d_in`` numbers instead of LoRA's ``r_A (d_in + d_out)`` (paper Table 1).

Sigma is trained **relative to its start**: ``sigma = sigma0 * (1 + delta)`` with ``delta`` the trained
tensor (initially 0). Whitening builds sigma from token-summed ``X^T X``, so its entries run from ~10^2
to ~10^5 on SmolLM2; Adam moves a parameter by about ``lr`` per step whatever its size, so an absolute
sigma would change by well under 1 % in a whole run (the reference's behaviour, kept as
``relative_sigma=False``). ``delta`` is scale-free like lambda (which starts at 1). It lives only while
training, as ``SharedBasisLinear.sigma_delta`` with a ``sigma0`` buffer (plain attributes rather than a
``torch.nn.utils.parametrize`` parametrisation, which makes a class per module and so a compiled graph per
layer): :func:`release_sigma` writes ``sigma0 * (1 + delta)`` back as a plain ``sigma`` so the saved format does
not change.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..accounting import unique_parameters
from ..modules import SharedBasisLinear

#: mode -> attribute names of SharedBasisLinear that train (paper Appendix G.3: both, Lambda only, Sigma only;
#: beyond the paper, ``factors``: the vectors and every layer's own V, which the budget already stores, so the
#: model trains far more without storing one number more than the vectors' mode; ``all``: every stored factor,
#: the groups' shared bases too, each trained once however many layers read it)
VECTOR_MODES: dict[str, tuple[str, ...]] = {
    "both": ("scale", "sigma"),
    "lambda": ("scale",),
    "sigma": ("sigma",),
    "factors": ("scale", "sigma", "v"),
    "all": ("scale", "sigma", "v", "basis"),
}
#: modes that train matrices (at a rate relative to each matrix's RMS, see :func:`optimizer_groups`)
MATRIX_MODES = ("factors", "all")
#: vectors a mode trains only where the layout stores them (Basis Sharing's has no lambda)
OPTIONAL: dict[str, set[str]] = {m: {"scale", "sigma"} for m in MATRIX_MODES}


def shared_basis_modules(model: nn.Module) -> list[tuple[str, SharedBasisLinear]]:
    """Every compressed linear module with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SharedBasisLinear)]


def mark_trainable(model: nn.Module, mode: str = "both", *, relative_sigma: bool = True) -> list[nn.Parameter]:
    """Freeze the whole model, then unfreeze lambda and/or sigma of every SharedBasisLinear.

    With ``relative_sigma`` (the default) the trained tensor for sigma is its relative change ``delta``
    (see the module docstring); call :func:`release_sigma` when training ends. Returns the trainable
    parameters in module order (a stable order, which resuming an optimizer needs). Raises if the model
    has no such vector: a model compressed without sigma/scale (or already finalised) would otherwise
    "train" nothing and silently return the untuned model.
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
        if attr in OPTIONAL.get(mode, ()) and all(v is None for v in vectors):
            continue
        if any(v is None for v in vectors):
            what = "lambda (scale)" if attr == "scale" else "sigma"
            raise ValueError(
                f"refinement mode {mode!r} trains {what}, but the model has no {what} vectors "
                f"(it was compressed without them or already finalised); recompress with that layout"
            )
        if attr == "sigma" and relative_sigma:
            vectors = [_relative(m) for _, m in modules]
        trainable += [v for v in vectors if v is not None]
    trainable = list({id(p): p for p in trainable}.values())  # a shared basis trains once
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def optimizer_groups(params: list[nn.Parameter], lr: float, lr_matrices: float | None, *,
                     bases: frozenset[int] = frozenset(), lr_bases: float | None = None) -> list[dict]:
    """AdamW parameter groups: everything at ``lr``, except, with ``lr_matrices`` (modes ``factors`` and ``all``),
    each matrix (a layer's V, a group's basis) at ``lr_matrices`` times its own RMS; the shared bases (their ids
    in ``bases``) at ``lr_bases`` times their RMS where that is given.

    Adam moves every entry by about its group's rate per step, so one absolute rate cannot suit both the vectors
    (lambda near 1, sigma's delta near 0: scale-free) and V, nor V of different scales: SharVeT's V is orthonormal
    (entries ~1/sqrt(Z d_out)) while Basis Sharing's carries the singular values (entries 10^2-10^4 times larger).
    Scaled by the RMS, every V moves by the same *fraction* per step, as sigma's delta does. A shared basis gets
    its own rate because one step of it moves every layer of its group at once. LoRA's A and B are matrices too
    but keep the one rate LoRA is tuned with (B starts at zero: it has no scale to follow)."""
    if lr_matrices is None:
        return [{"params": list(params), "lr": lr}]
    groups = [{"params": [p for p in params if p.dim() < 2], "lr": lr}] if any(p.dim() < 2 for p in params) else []
    for p in params:
        if p.dim() >= 2:
            rms = float(p.detach().float().pow(2).mean().sqrt()) or 1.0
            rate = lr_bases if id(p) in bases and lr_bases is not None else lr_matrices
            groups.append({"params": [p], "lr": rate * rms})
    return groups


def _relative(module: SharedBasisLinear) -> nn.Parameter:
    """``sigma = sigma0 (1 + delta)``: the trained ``delta`` moves sigma by a fraction, not an absolute step
    (``SharedBasisLinear.current_sigma``; sigma0 is a float32 copy of sigma, which stays as it is until
    :func:`release_sigma`)."""
    if module.sigma_delta is None:
        module.sigma0 = module.sigma.detach().float().clone()
        module.sigma_delta = nn.Parameter(torch.zeros_like(module.sigma))
    return module.sigma_delta


@torch.no_grad()
def release_sigma(model: nn.Module) -> None:
    """Write every relative sigma back as a plain, frozen ``sigma = sigma0 (1 + delta)`` in its first dtype."""
    for _, m in shared_basis_modules(model):
        if m.sigma_delta is not None:
            value = m.current_sigma().detach()
            m.sigma_delta, m.sigma0 = None, None
            m.sigma = nn.Parameter(value, requires_grad=False)


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
