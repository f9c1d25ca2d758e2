"""Quantise a model's decoder linear modules in place, and count its stored bytes exactly.

What is quantised: every linear module the architecture adapter knows (q, k, v, o, gate, up, down of each
decoder layer), as GPTQ/AWQ do; embeddings, norms and the LM head stay in floating point. A dense module
(``nn.Linear`` or GPT-2's ``Conv1D``) becomes a :class:`QuantizedLinear`; a whole shared matrix (SEQ / CYCLE) is
quantised once. A :class:`SharedBasisLinear` (``y = ((x * lambda) U^T) (V Sigma)^T``) first has sigma absorbed
into V, then is rescaled, exactly (the product is unchanged), before its factors are quantised:

* rank components: ``U_j c_j`` and ``V_l[:, j] / c_j``, with ``c_j`` the largest ``|V_l[i, j]|`` over the group's
  layers. V's groups of 128 run along r, its input dimension, so one scale covers 128 components whose singular
  values span orders of magnitude; unscaled, the small components round to zero.
* input channels: ``U[:, k] / a_k`` and every member's ``lambda_k a_k``, with ``a_k`` the largest ``|U[j, k]|``.
  A whitened basis is ``S^-T u``: its entries are large along input directions the model barely excites and small
  along the ones it uses most, so one scale per group of 128 inputs would spend its levels on the former. lambda is
  per layer and stays in floating point, so it absorbs this for free (a layer stored without lambda gains one,
  counted in the bytes).

Then the basis is quantised once (groups along d_in) and held by every layer of its group; V per layer (groups
along r); lambda and biases stay in floating point. ``rescale=False`` skips both rescalings (the ablation).

Bytes (:func:`storage_report`): each quantised tensor's packed codes and float16 scales and zero points
(:mod:`sharvet.quantization.rtn`), plus every remaining parameter and persistent buffer at ``float_bytes`` each
(2: stored as float16 / bfloat16), each storage once (tied embeddings, a group's basis).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..accounting import unique_parameters
from ..models import adapter_for
from ..modules import SharedBasisLinear, SparseProjectionLinear
from .layers import QuantizedLinear, QuantizedSharedBasisLinear
from .rtn import QuantizedTensor

#: bytes per unquantised number in the storage format (float16 / bfloat16)
FLOAT_BYTES = 2


@dataclass(frozen=True)
class StorageReport:
    """Stored bytes of a model, split into the quantised weights and everything kept in floating point."""

    bits: int | None
    group_size: int | None
    float_bytes: int
    quantized_tensors: int
    quantized_weights: int
    packed_bytes: int
    scale_zero_bytes: int
    float_numbers: int

    @property
    def quantized_bytes(self) -> int:
        return self.packed_bytes + self.scale_zero_bytes

    @property
    def unquantized_bytes(self) -> int:
        return self.float_numbers * self.float_bytes

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.unquantized_bytes

    @property
    def bits_per_weight(self) -> float | None:
        """Average stored bits per quantised weight, scales and zero points included."""
        return 8 * self.quantized_bytes / self.quantized_weights if self.quantized_weights else None

    def to_dict(self) -> dict:
        return {**asdict(self), "quantized_bytes": self.quantized_bytes, "unquantized_bytes": self.unquantized_bytes,
                "total_bytes": self.total_bytes, "bits_per_weight": self.bits_per_weight,
                "format": "RTN, groups along the input dimension; codes in one LSB-first bit stream per tensor; "
                          "float16 scale and zero point per group; other tensors at float_bytes each"}

    def line(self) -> str:
        head = "unquantised" if self.bits is None else f"RTN {self.bits}-bit, group {self.group_size}"
        bpw = "" if self.bits_per_weight is None else f" ({self.bits_per_weight:.3f} bits/weight)"
        return (f"{head}: {self.total_bytes:,} bytes = {self.quantized_bytes:,} quantised{bpw} in "
                f"{self.quantized_tensors} tensors + {self.unquantized_bytes:,} in floating point "
                f"({self.float_numbers:,} numbers x {self.float_bytes} B)")


def storage_report(model: nn.Module, *, float_bytes: int = FLOAT_BYTES) -> StorageReport:
    """Exact stored bytes of ``model`` (quantised or not): each storage once."""
    tensors = list({id(m): m for m in model.modules() if isinstance(m, QuantizedTensor)}.values())
    quant_buffers = {id(b) for t in tensors for b in t.buffers()}
    floats = sum(p.numel() for p in unique_parameters(model))
    floats += sum(b.numel() for name, b in model.named_buffers() if id(b) not in quant_buffers
                  and _persistent(model, name))
    floats += sum(m.index.numel() for m in model.modules() if isinstance(m, SparseProjectionLinear))
    bits = {t.bits for t in tensors}
    groups = {t.group_size for t in tensors}
    return StorageReport(
        bits=bits.pop() if len(bits) == 1 else None, group_size=groups.pop() if len(groups) == 1 else None,
        float_bytes=float_bytes, quantized_tensors=len(tensors),
        quantized_weights=sum(t.rows * t.cols for t in tensors),
        packed_bytes=sum(t.packed_bytes for t in tensors), scale_zero_bytes=sum(t.meta_bytes for t in tensors),
        float_numbers=floats)


def _persistent(model: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    return leaf not in model.get_submodule(owner)._non_persistent_buffers_set


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int = 4, group_size: int = 128, *, rescale: bool = True,
                   float_bytes: int = FLOAT_BYTES) -> StorageReport:
    """Quantise every decoder linear module of ``model`` in place (RTN); returns the stored bytes.

    ``rescale=False`` quantises U and the sigma-absorbed V as they are (the ablation of the rescalings above).
    """
    adapter = adapter_for(model)
    slots = [(layer, t, adapter.get_module(layer, t)) for layer in range(adapter.num_layers)
             for t in adapter.type_names]
    bases = _quantized_bases([m for _, _, m in slots if isinstance(m, SharedBasisLinear)], bits, group_size, rescale)
    dense: dict[int, QuantizedTensor] = {}
    for layer, t, module in slots:
        if isinstance(module, SharedBasisLinear):
            basis = bases[id(module.basis)]
            v = QuantizedTensor(_absorbed_v(module) / basis.rank_scale.to(module.v.dtype), bits, group_size)
            scale = module.scale
            if rescale:
                a = basis.input_scale.to(module.v.dtype)
                scale = a if scale is None else scale * a
            new = QuantizedSharedBasisLinear(basis.tensor, v, scale=scale, bias=module.bias)
        elif isinstance(module, SparseProjectionLinear):
            raise ValueError("RTN quantisation of FiPS sparse projections is not supported")
        else:
            weight = adapter.weight(layer, t)
            key = id(module.weight)
            if key not in dense:
                dense[key] = QuantizedTensor(weight, bits, group_size)
            new = QuantizedLinear(dense[key], adapter.bias(layer, t))
        adapter.set_module(layer, t, new)
    return storage_report(model, float_bytes=float_bytes)


def _absorbed_v(module: SharedBasisLinear) -> torch.Tensor:
    return module.v if module.sigma is None else module.v * module.sigma.to(module.v.dtype)


@dataclass(frozen=True)
class _Basis:
    """A group's quantised basis ``diag(c) U diag(1/a)`` and the factors its members' V and lambda absorb."""

    tensor: QuantizedTensor
    rank_scale: torch.Tensor  # c (r): V's column j is divided by c_j
    input_scale: torch.Tensor  # a (d_in): lambda is multiplied by a


def _ones_where_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))


def _quantized_bases(modules: list[SharedBasisLinear], bits: int, group_size: int, rescale: bool
                     ) -> dict[int, _Basis]:
    """Per shared basis (by identity): the rescaled basis, quantised once, and its factors."""
    members: dict[int, list[SharedBasisLinear]] = {}
    for m in modules:
        members.setdefault(id(m.basis), []).append(m)
    out = {}
    for key, group in members.items():
        u = group[0].basis.detach().float()
        c = torch.ones(u.shape[0], device=u.device)
        a = torch.ones(u.shape[1], device=u.device)
        if rescale:
            c = _ones_where_zero(torch.stack([_absorbed_v(m).abs().amax(0) for m in group]).amax(0).float())
            a = _ones_where_zero((u * c[:, None]).abs().amax(0))
        rescaled = (u * c[:, None] / a).to(group[0].basis.dtype)
        out[key] = _Basis(QuantizedTensor(rescaled, bits, group_size), c, a)
    return out
