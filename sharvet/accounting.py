"""Parameter accounting: what the compression ratio counts, for the linear modules and the whole model."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .models import ModelAdapter


def stored_parameter_count(module: nn.Module) -> int:
    """Numbers a checkpoint stores: unique parameters plus the index tensors of sparse projections."""
    from .modules import SparseProjectionLinear

    extra = sum(m.index.numel() for m in module.modules() if isinstance(m, SparseProjectionLinear))
    return unique_parameter_count(module) + extra


def unique_parameter_count(module: nn.Module) -> int:
    """Parameters by storage: tied embeddings and shared bases count once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for _, p in module.named_parameters(remove_duplicate=False):
        key = (p.untyped_storage().data_ptr(), p.storage_offset()) if p.device.type != "meta" else (id(p), 0)
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def linear_parameter_count(adapter: ModelAdapter, types: list[str]) -> int:
    """Stored parameters of the given module types over all layers, shared tensors once."""
    holder = nn.ModuleList(adapter.get_module(l, t) for l in range(adapter.num_layers) for t in types)
    return stored_parameter_count(holder)


@dataclass
class ParameterReport:
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

    def lines(self) -> list[str]:
        return [
            f"target ratio            {self.target_ratio:.4f} (of the compressed linear modules)",
            f"linear modules          {self.linear_original:,} -> {self.linear_compressed:,} "
            f"parameters (ratio {self.linear_ratio:.4f})",
            f"whole model             {self.model_original:,} -> {self.model_compressed:,} "
            f"parameters (ratio {self.model_ratio:.4f}; embeddings, norms and LM head untouched)",
        ]
