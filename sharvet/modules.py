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
        #: while refining with a relative sigma: ``sigma0 (1 + sigma_delta)`` with ``sigma_delta`` trained and
        #: ``sigma0`` a buffer (a copy of sigma that FSDP does not shard). Plain attributes of this class, not a
        #: parametrization, so every layer stays one class (``torch.compile`` compiles one graph for all of them)
        self.register_parameter("sigma_delta", None)
        self.register_buffer("sigma0", None)
        self.scale = None if scale is None else nn.Parameter(scale.reshape(d_in), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.reshape(d_out), requires_grad=False)

    def current_sigma(self) -> torch.Tensor | None:
        """sigma, or ``sigma0 (1 + delta)`` while a relative sigma trains (computed in float32, in sigma's dtype)."""
        if self.sigma_delta is None:
            return self.sigma
        return (self.sigma0 * (1 + self.sigma_delta.float())).to(self.sigma.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(d_out, d_in)`` weight this module represents (for analysis, never in forward)."""
        sigma = self.current_sigma()
        coeff = self.v if sigma is None else self.v * sigma
        w = coeff @ self.basis
        return w if self.scale is None else w * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each vector scales whichever side is smaller, the same product either way: lambda scales x
        # (tokens x d_in) or the basis's columns (r x d_in), sigma scales h (tokens x r) or V's columns
        # (d_out x r). Decoding a few tokens scales the activations; a training batch of thousands of tokens
        # scales the weights, which saves the elementwise passes over (and the stored copies of) its activations.
        basis, v = self.basis, self.v
        tokens = x.numel() // basis.shape[1]  # sizes from the tensors: symbolic when compiled with dynamic shapes
        if self.scale is not None:
            if tokens > basis.shape[0]:
                basis = basis * self.scale
            else:
                x = x * self.scale
        h = F.linear(x, basis)
        sigma = self.current_sigma()
        if sigma is not None:
            if tokens > v.shape[0]:
                v = v * sigma
            else:
                h = h * sigma
        return F.linear(h, v, self.bias)

    @torch.no_grad()
    def absorb_sigma(self) -> None:
        """Fold sigma into v (V' = Sigma V^T): one multiply fewer per forward, r parameters fewer."""
        if self.sigma is None:
            return
        if self.sigma_delta is not None:
            raise RuntimeError("a relative sigma is still training: release it first (refinement.vectors)")
        self.v = nn.Parameter(self.v * self.sigma.to(self.v.dtype), requires_grad=False)
        self.sigma = None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"sigma={self.sigma is not None}, scale={self.scale is not None}, bias={self.bias is not None}"
        )


def shared_linear(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` and ``bias`` themselves (SEQ / CYCLE whole-layer sharing).

    Built on the meta device so no private weight is allocated and thrown away; every layer of a set
    holds the same Parameter objects, so they are stored, counted and saved once.
    """
    d_out, d_in = weight.shape
    module = nn.Linear(d_in, d_out, bias=bias is not None, device="meta")
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return module


class SparseProjectionLinear(nn.Module):
    """FiPS: a basis shared by a group of modules and a sparse layer-specific projection.

    ``basis`` (``(r, d)``, shared) lives on the model-width side ``d`` of the module: for a module
    reading the model width (``orientation='in'``: q, gate, up) ``W = P U``; for one writing it
    (``'out'``: o, down) ``W = (P U)^T``. ``P`` (``(rows, r)``) keeps only ``values`` at the flat
    positions ``index`` (int32, stored beside the values: both count as stored parameters). The dense
    ``P`` is scattered from the values at each forward -- a cost of one ``rows x r`` write, small next to
    the matmuls, and what lets the values train and the checkpoint stay sparse.
    """

    def __init__(self, basis: nn.Parameter, values: torch.Tensor, index: torch.Tensor, rows: int, *,
                 orientation: str, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if orientation not in ("in", "out"):
            raise ValueError(f"orientation must be 'in' or 'out', got {orientation!r}")
        if values.shape != index.shape or values.dim() != 1:
            raise ValueError("values and index must be 1-D tensors of the same length")
        rank, width = basis.shape
        self.rows, self.rank, self.orientation = rows, rank, orientation
        self.in_features, self.out_features = (width, rows) if orientation == "in" else (rows, width)
        self.basis = basis
        self.values = nn.Parameter(values, requires_grad=False)
        self.register_buffer("index", index.to(torch.int32))
        self.bias = None if bias is None else nn.Parameter(bias.reshape(self.out_features), requires_grad=False)

    def projection(self) -> torch.Tensor:
        """The dense ``(rows, r)`` P with zeros off the kept positions."""
        flat = self.values.new_zeros(self.rows * self.rank)
        return flat.index_put((self.index.long(),), self.values).view(self.rows, self.rank)

    @property
    def weight(self) -> torch.Tensor:
        w = self.projection() @ self.basis
        return w if self.orientation == "in" else w.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.projection()
        if self.orientation == "in":
            return F.linear(F.linear(x, self.basis), p, self.bias)
        return F.linear(F.linear(x, p.T), self.basis.T, self.bias)

    def extra_repr(self) -> str:
        density = self.values.numel() / (self.rows * self.rank)
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"orientation={self.orientation}, density={density:.3f}, bias={self.bias is not None}")
