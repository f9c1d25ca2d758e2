"""4-bit weights run from packed codes by PyTorch's own int4 matmul (tinygemm), on CUDA and on the CPU.

``torch.ops.aten._weight_int4pack_mm`` (CUDA, bfloat16) and ``_weight_int4pack_mm_for_cpu`` are the kernels
torchao's int4 weight-only path calls; they ship inside torch, so they run on the GPU image with nothing to
install. They read ``w = (q - 8) * s + m`` per group, so our ``(q - z) * s`` is passed as ``m = (8 - z) * s``,
same codes. Shapes are padded to what the kernels take (inputs to a multiple of 128; outputs to a multiple of
16, as the CPU build wants, CUDA 8) with zero weights and cut back after, so results equal the dequantised
matmul up to bfloat16.

:func:`use_int4_kernels` swaps each 4-bit :class:`QuantizedTensor` of a quantised model for an :class:`Int4Weight`
(a shared basis stays one object): the layers call ``weight.linear(x)`` whichever they hold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import QuantizedLinear, QuantizedSharedBasisLinear
from .rtn import QuantizedTensor

_K_MULTIPLE, _N_MULTIPLE, _INNER_K_TILES = 128, 16, 8


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Int4Weight(nn.Module):
    """A 4-bit RTN weight in the kernels' packed layout (bfloat16 scales and offsets)."""

    def __init__(self, weight: QuantizedTensor) -> None:
        super().__init__()
        if weight.bits != 4 or weight.group_size not in (32, 64, 128, 256):
            raise ValueError(f"the int4 kernels take 4-bit weights in groups of 32-256, got {weight.bits}-bit, "
                             f"group {weight.group_size}")
        self.rows, self.cols, self.group_size = weight.rows, weight.cols, weight.group_size
        self.k = _round_up(self.cols, max(_K_MULTIPLE, self.group_size))
        n = _round_up(self.rows, _N_MULTIPLE)
        codes = F.pad(weight.codes().to(torch.int32), (0, self.k - self.cols, 0, n - self.rows))
        groups = self.k // self.group_size
        scale = F.pad(weight.scale.float(), (0, groups - weight.scale.shape[1], 0, n - self.rows))
        zero = F.pad(weight.zero.float(), (0, groups - weight.zero.shape[1], 0, n - self.rows), value=8.0)
        self.cpu = codes.device.type == "cpu"
        if self.cpu:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
        else:
            pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, _INNER_K_TILES)
        self.register_buffer("packed", packed)
        self.register_buffer("scale_offset", torch.stack([scale, (8 - zero) * scale], -1).transpose(0, 1)
                             .contiguous().to(torch.bfloat16))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` in bfloat16 (the kernels' precision), returned in ``x``'s dtype."""
        flat = F.pad(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), (0, self.k - self.cols))
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu if self.cpu else torch.ops.aten._weight_int4pack_mm
        y = mm(flat, self.packed, self.group_size, self.scale_offset)[:, : self.rows]
        return y.reshape(*x.shape[:-1], self.rows).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}, group_size={self.group_size}, device={self.packed.device}"


def use_int4_kernels(model: nn.Module) -> int:
    """Run every 4-bit quantised weight of ``model`` by the int4 kernel of its current device; returns how many.

    Call after moving the model to its device (the packed layout differs between CPU and CUDA).
    """
    swapped: dict[int, Int4Weight] = {}

    def kernel(w: QuantizedTensor) -> Int4Weight:
        if id(w) not in swapped:
            swapped[id(w)] = Int4Weight(w)
        return swapped[id(w)]

    for m in list(model.modules()):
        if isinstance(m, QuantizedLinear):
            m.qweight = kernel(m.qweight)
        elif isinstance(m, QuantizedSharedBasisLinear):
            m.basis, m.v = kernel(m.basis), kernel(m.v)
    return len(swapped)
