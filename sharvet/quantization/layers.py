"""Linear layers whose weights are :class:`~sharvet.quantization.rtn.QuantizedTensor` s.

``QuantizedLinear`` replaces a dense linear module; ``QuantizedSharedBasisLinear`` a
:class:`~sharvet.modules.SharedBasisLinear` whose basis ``U`` is one quantised tensor held by every layer of
its group and whose per-layer ``V`` (sigma absorbed) is quantised per layer. lambda (the input scaling) and
the bias stay in floating point. A weight is anything with ``linear(x)``: a :class:`QuantizedTensor` (the
dequantised matmul) or a :class:`~sharvet.quantization.int4.Int4Weight` (the int4 kernel).
"""
from __future__ import annotations

import torch
from torch import nn

from .rtn import QuantizedTensor


class QuantizedLinear(nn.Module):
    """``y = x W_q^T + b`` with ``W_q`` an RTN-quantised ``(d_out, d_in)`` weight."""

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.cols, weight.rows
        self.qweight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().reshape(weight.rows), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qweight.linear(x)
        return y if self.bias is None else y + self.bias


class QuantizedSharedBasisLinear(nn.Module):
    """``y = ((x * lambda) U_q^T) V_q^T + b``: the quantised form of an absorbed ``SharedBasisLinear``.

    ``basis`` (``(r, d_in)``, groups of ``group_size`` along d_in) is shared by the group's layers; ``v``
    (``(d_out, r)``, groups along r, V's own input dimension) is per layer.
    """

    def __init__(self, basis: QuantizedTensor, v: QuantizedTensor, *, scale: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if v.cols != basis.rows:
            raise ValueError(f"v has {v.cols} columns but the basis has rank {basis.rows}")
        self.in_features, self.out_features, self.rank = basis.cols, v.rows, basis.rows
        self.basis, self.v = basis, v
        self.scale = None if scale is None else nn.Parameter(scale.detach().reshape(basis.cols), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().reshape(v.rows), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale
        y = self.v.linear(self.basis.linear(x))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scale={self.scale is not None}, bias={self.bias is not None}")
