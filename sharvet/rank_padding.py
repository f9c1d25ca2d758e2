"""Ranks padded with zeros to a multiple of 8, and trimmed back: the same function, tensor-core-friendly sizes.

The planner's ranks are arbitrary (1433, 2229, ...). A bf16 GEMM whose inner or row dimension is not a multiple of 8
misses cuBLAS's aligned kernels: the 8B-shape prefill at ratio 0.7 ran at 0.28x dense with such ranks (H200,
2026-11-30), and CUTLASS's ``align1`` fallbacks were among the largest kernels of a SmolLM2 refinement step.
Padding a basis with zero rows, each V with zero columns and sigma with zeros adds ``r' - r`` components that are
exactly zero: the output is unchanged, and in training their gradients are exactly zero too (their activations are
zero), so AdamW leaves them at zero and the trajectory is the unpadded one up to summation order.

Padding is in place (``.data``), so Parameter objects, their sharing between layers and an optimizer built on them
stay valid; :func:`trim_ranks` undoes it. A relative sigma (``sigma (1 + delta)``, ``refinement.vectors``) is padded
in its sigma, its ``sigma0`` and its trained ``delta``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .modules import SharedBasisLinear

#: ranks are padded to a multiple of this (bf16 tensor-core GEMMs want multiples of 8)
DEFAULT_ALIGN = 8


@dataclass
class Padding:
    """What :func:`pad_ranks` did: each padded module's first rank, the bases padded and the zeros added."""

    ranks: dict[SharedBasisLinear, int] = field(default_factory=dict)
    bases: int = 0
    zeros: int = 0


def _resize(t: torch.Tensor, size: int, dim: int) -> None:
    """Grow ``t`` with zeros, or cut it, to ``size`` along ``dim``, in place (``.data``)."""
    now = t.shape[dim]
    if size > now:
        shape = list(t.shape)
        shape[dim] = size - now
        t.data = torch.cat([t.data, t.data.new_zeros(shape)], dim=dim)
    else:
        t.data = t.data.narrow(dim, 0, size).clone()


def _resize_module(m: SharedBasisLinear, size: int, seen: set[int]) -> bool:
    """Resize ``m``'s rank to ``size``: its basis once (``seen`` holds the bases done), its V and sigma; True
    when the basis was resized now."""
    first = id(m.basis) not in seen
    if first:
        seen.add(id(m.basis))
        _resize(m.basis, size, 0)
    _resize(m.v, size, 1)
    for t in (m.sigma, m.sigma0, m.sigma_delta):
        if t is not None:
            _resize(t, size, 0)
    m.rank = size
    return first


@torch.no_grad()
def pad_ranks(model: nn.Module, align: int = DEFAULT_ALIGN) -> Padding:
    """Zero-pad every basis (once, however many modules share it), V and sigma to a rank divisible by ``align``."""
    padding = Padding()
    seen: set[int] = set()
    for m in model.modules():
        if not isinstance(m, SharedBasisLinear) or m.rank % align == 0:
            continue
        rank = m.rank
        extra = -rank % align
        padding.ranks[m] = rank
        if _resize_module(m, rank + extra, seen):
            padding.bases += 1
            padding.zeros += extra * m.in_features
        padding.zeros += extra * m.out_features
    return padding


@torch.no_grad()
def trim_ranks(padding: Padding) -> None:
    """Cut every module padded by :func:`pad_ranks` back to its first rank (values trained since are kept)."""
    seen: set[int] = set()
    for m, rank in padding.ranks.items():
        _resize_module(m, rank, seen)
