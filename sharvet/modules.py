"""The compressed linear layer: ``y = ((x * lambda) U) * sigma V_l^T + b`` with U shared by a group.

``basis`` (U^T, shape ``(r, d_in)``) is one ``nn.Parameter`` object held by every layer of its group, so
it has one storage, appears once in ``named_parameters()`` and is trained/saved once. ``scale`` (lambda,
``d_in``) and ``sigma`` (``r``) are the per-layer vectors that refinement trains; after refinement
``absorb_sigma`` folds sigma into ``v`` and the forward becomes two plain matmuls plus a row scaling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SharedBasisLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` / GPT-2 ``Conv1D`` built from a (shared) low-rank basis."""

    def __init__(
        self,
        basis: nn.Parameter,
        v: torch.Tensor,
        *,
        sigma: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        rank, d_in = basis.shape
        d_out = v.shape[0]
        if v.shape != (d_out, rank):
            raise ValueError(f"v must be (d_out, {rank}), got {tuple(v.shape)}")
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        self.basis = basis
        self.v = nn.Parameter(v, requires_grad=False)
        self.sigma = None if sigma is None else nn.Parameter(sigma.reshape(rank), requires_grad=False)
        self.scale = None if scale is None else nn.Parameter(scale.reshape(d_in), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.reshape(d_out), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(d_out, d_in)`` weight this module represents (for analysis, never in forward)."""
        coeff = self.v if self.sigma is None else self.v * self.sigma
        w = coeff @ self.basis
        return w if self.scale is None else w * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale
        h = F.linear(x, self.basis)
        if self.sigma is not None:
            h = h * self.sigma
        return F.linear(h, self.v, self.bias)

    @torch.no_grad()
    def absorb_sigma(self) -> None:
        """Fold sigma into v (V' = Sigma V^T): one multiply fewer per forward, r parameters fewer."""
        if self.sigma is None:
            return
        self.v = nn.Parameter(self.v * self.sigma.to(self.v.dtype), requires_grad=False)
        self.sigma = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"sigma={self.sigma is not None}, scale={self.scale is not None}, bias={self.bias is not None}"
        )

    def num_parameters(self, *, include_basis: bool) -> int:
        """Stored parameters of this layer; the shared basis is counted by whoever counts the group."""
        own = sum(p.numel() for p in (self.v, self.sigma, self.scale, self.bias) if p is not None)
        return own + (self.basis.numel() if include_basis else 0)
