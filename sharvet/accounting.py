"""Parameter accounting: what the compression ratio counts, for the linear modules and the whole model.

One counter for every place that counts stored numbers: a tensor shared by several modules (a group's
basis, a whole shared matrix, tied embeddings) counts once, by storage; sparse projections add their
int32 index tensors. Plans are priced before anything is built against :class:`ModuleShape` counts, and
``compress`` checks the built model against that price with these counters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .models import ModelAdapter
from .modules import SparseProjectionLinear


@dataclass(frozen=True)
class ModuleShape:
    d_in: int
    d_out: int
    bias: bool

    @property
    def parameters(self) -> int:
        """Weights and bias of the original module."""
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)


def module_shapes(adapter: ModelAdapter) -> dict[str, ModuleShape]:
    """Shape and bias of every module type (read from layer 0; identical in every layer)."""
    return {t: ModuleShape(*adapter.shape(t), adapter.bias(0, t) is not None) for t in adapter.type_names}


def unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``module`` once per storage: tied embeddings and shared bases appear once."""
    seen: set[tuple[int, int]] = set()
    out = []
    for _, p in module.named_parameters(remove_duplicate=False):
        key = (p.untyped_storage().data_ptr(), p.storage_offset()) if p.device.type != "meta" else (id(p), 0)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def unique_parameter_count(module: nn.Module) -> int:
    """Parameters by storage: tied embeddings and shared bases count once."""
    return sum(p.numel() for p in unique_parameters(module))


def stored_parameter_count(module: nn.Module) -> int:
    """Numbers a checkpoint stores: unique parameters plus the index tensors of sparse projections."""
    extra = sum(m.index.numel() for m in module.modules() if isinstance(m, SparseProjectionLinear))
    return unique_parameter_count(module) + extra


def linear_parameter_count(adapter: ModelAdapter, types: list[str]) -> int:
    """Stored parameters of the given module types over all layers, shared tensors once."""
    holder = nn.ModuleList(adapter.get_module(l, t) for l in range(adapter.num_layers) for t in types)
    return stored_parameter_count(holder)


def lora_share(shapes: dict[str, ModuleShape], rank: int) -> float:
    """LoRA's adapters of rank ``rank`` on every compressed module, as a fraction of the original linear
    parameters: what the compression ratio must give up for the adapters to count inside the budget."""
    return rank * sum(s.d_in + s.d_out for s in shapes.values()) / sum(s.parameters for s in shapes.values())


@dataclass(frozen=True)
class BudgetReport:
    """Target and planned parameters of the compressed linear modules (priced before building)."""

    target_ratio: float
    original: int
    planned: int

    @property
    def budget(self) -> int:
        return int(self.target_ratio * self.original)

    @property
    def realised_ratio(self) -> float:
        return self.planned / self.original

    def line(self) -> str:
        return (f"budget {self.budget:,} of {self.original:,} linear parameters (ratio {self.target_ratio}); "
                f"planned {self.planned:,} (realised ratio {self.realised_ratio:.4f})")

    def to_dict(self) -> dict:
        return {**asdict(self), "budget": self.budget, "realised_ratio": self.realised_ratio}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BudgetReport":
        return cls(d["target_ratio"], d["original"], d["planned"])


@dataclass(frozen=True)
class ParameterReport:
    """Counted parameters of the built model, before and after compression."""

    linear_original: int
    linear_compressed: int
    model_original: int
    model_compressed: int
    target_ratio: float

    @property
    def linear_ratio(self) -> float:
        return self.linear_compressed / self.linear_original

    @property
    def model_ratio(self) -> float:
        return self.model_compressed / self.model_original

    def to_dict(self) -> dict:
        return {**asdict(self), "linear_ratio": self.linear_ratio, "model_ratio": self.model_ratio}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParameterReport":
        return cls(d["linear_original"], d["linear_compressed"], d["model_original"], d["model_compressed"],
                   d["target_ratio"])

    def lines(self) -> list[str]:
        return [
            f"target ratio            {self.target_ratio:.4f} (of the compressed linear modules)",
            f"linear modules          {self.linear_original:,} -> {self.linear_compressed:,} "
            f"parameters (ratio {self.linear_ratio:.4f})",
            f"whole model             {self.model_original:,} -> {self.model_compressed:,} "
            f"parameters (ratio {self.model_ratio:.4f}; embeddings, norms and LM head untouched)",
        ]
