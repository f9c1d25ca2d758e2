"""Weight-only round-to-nearest (RTN) quantisation with groups along the input dimension, packed exactly.

The quantiser is GPTQ's / AWQ's RTN baseline: every row of a ``(rows, cols)`` weight (rows = outputs,
cols = inputs, the ``nn.Linear`` convention) is cut into groups of ``group_size`` consecutive input columns;
each group gets a scale and an integer zero point from its min-max range, widened to include 0 (as GPTQ's
quantizer does, so the zero point is a code in ``[0, 2^bits - 1]`` and 0 is exact), and every weight becomes
``q = clamp(round(w / s) + z, 0, 2^bits - 1)``, read back as ``(q - z) * s``. When ``cols`` is not a multiple of
``group_size`` the last group of a row is shorter and has its own range (nothing is padded into it).

Storage format (what :attr:`QuantizedTensor.nbytes` counts, byte for byte): the codes of the whole tensor in one
bit stream, row-major, ``bits`` bits per code, least significant bit first, the last byte zero-filled
(``ceil(rows * cols * bits / 8)`` bytes); per group one float16 scale and one float16 zero point (4 bytes).
The scale is rounded to float16 *before* the codes are chosen, so the stored numbers reproduce the quantiser's
output exactly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

#: bytes of one stored scale and of one stored zero point (float16)
META_BYTES = 2


def group_count(cols: int, group_size: int) -> int:
    return math.ceil(cols / group_size)


def rtn_codes(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes uint8 (rows, cols), scale float16 (rows, groups), zero float16 (rows, groups))`` of ``w``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rows, cols = w.shape
    groups = group_count(cols, group_size)
    pad = groups * group_size - cols
    w = w.detach().float()
    padded = lambda value: nn.functional.pad(w, (0, pad), value=value).view(rows, groups, group_size)
    lo = padded(math.inf).amin(-1).clamp(max=0)
    hi = padded(-math.inf).amax(-1).clamp(min=0)
    max_code = 2**bits - 1
    scale = ((hi - lo) / max_code).half().float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale, codes = z
    zero = torch.round(-lo / scale).clamp(0, max_code)
    per_column = lambda t: t.repeat_interleave(group_size, dim=1)[:, :cols]
    codes = torch.clamp(torch.round(w / per_column(scale)) + per_column(zero), 0, max_code)
    return codes.to(torch.uint8), scale.half(), zero.half()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes as one bit stream, ``bits`` bits each, least significant bit first (uint8, 1-D)."""
    flat = codes.reshape(-1).to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    stream = nn.functional.pad(stream, (0, (-stream.numel()) % 8))
    weights = torch.arange(8, dtype=torch.uint8, device=flat.device)
    return (stream.view(-1, 8) << weights).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``count`` codes (uint8, 1-D)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, None] >> shifts) & 1).reshape(-1)[: count * bits]
    weights = torch.arange(bits, dtype=torch.uint8, device=packed.device)
    return (stream.view(count, bits) << weights).sum(1, dtype=torch.int32).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(q - z) * s`` per group, float32."""
    cols = codes.shape[1]
    per_column = lambda t: t.float().repeat_interleave(group_size, dim=1)[:, :cols]
    return (codes.float() - per_column(zero)) * per_column(scale)


class QuantizedTensor(nn.Module):
    """One RTN-quantised weight in its packed storage, plus the dequantised copy the forward reads.

    A module (not a tensor) so that a weight shared by several layers -- a group's basis -- is one object that
    every layer holds: ``model.modules()`` yields it once, so it is counted once. The dequantised copy
    (``dense``, a non-persistent buffer in the weight's original dtype) is what the plain forward multiplies
    by: this evaluates the quantised model exactly as a fake-quant GPTQ/AWQ evaluation does; the stored
    bytes are the packed buffers. :mod:`sharvet.quantization.int4` runs 4-bit weights from packed codes instead.
    """

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int) -> None:
        super().__init__()
        self.rows, self.cols = weight.shape
        self.bits, self.group_size = bits, group_size
        codes, scale, zero = rtn_codes(weight, bits, group_size)
        self.register_buffer("packed", pack_codes(codes, bits))
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.register_buffer("dense", dequantize_codes(codes, scale, zero, group_size).to(weight.dtype),
                             persistent=False)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` with the dequantised weight."""
        return nn.functional.linear(x, self.dense)

    def codes(self) -> torch.Tensor:
        """The ``(rows, cols)`` uint8 codes, unpacked from storage."""
        return unpack_codes(self.packed, self.bits, self.rows * self.cols).view(self.rows, self.cols)

    def dequantize(self) -> torch.Tensor:
        """The weight read back from the packed storage alone (float32)."""
        return dequantize_codes(self.codes(), self.scale, self.zero, self.group_size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored format: packed codes plus a float16 scale and zero point per group."""
        return self.packed_bytes + self.meta_bytes

    @property
    def packed_bytes(self) -> int:
        return math.ceil(self.rows * self.cols * self.bits / 8)

    @property
    def meta_bytes(self) -> int:
        return 2 * META_BYTES * self.rows * group_count(self.cols, self.group_size)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}, bits={self.bits}, group_size={self.group_size}"
