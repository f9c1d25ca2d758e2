"""A group kind written outside the package, in one file: every module on its own at a lower rank.

Each linear module is stored as two plain ``nn.Linear`` factors (``d_in -> r -> d_out``, the bias on the
second) from its own truncated SVD -- no sharing at all, the simplest real way of meeting a budget. It
shows what a new method family has to supply: a planner, a price, factors and an installer.
"""
from __future__ import annotations

import torch
from torch import nn

from sharvet.accounting import ModuleShape, module_shapes
from sharvet.allocation import LayerLayout
from sharvet.calibration import CalibrationStats
from sharvet.kinds.base import GroupPlan, Kind, PlanConfig, like, singletons
from sharvet.methods import Method
from sharvet.models import ModelAdapter
from sharvet.similarity import TypeSimilarity

Factors = tuple[torch.Tensor, torch.Tensor]  # (r, d_in) and (d_out, r)


class TwoFactorLinear(nn.Module):
    """``up(down(x))``; like every installed module it answers the adapter as an ``nn.Linear`` would."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool, **kw) -> None:
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.down = nn.Linear(d_in, rank, bias=False, **kw)
        self.up = nn.Linear(rank, d_out, bias=bias, **kw)

    @property
    def weight(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class OwnRankKind(Kind):
    name = "own-rank"
    whitens = False  # plain SVD of each weight: no calibration statistics

    def plan(self, adapter: ModelAdapter, cfg: PlanConfig, shared: list[str],
             sims: dict[str, TypeSimilarity], stats: CalibrationStats | None = None) -> list[GroupPlan]:
        """Every module alone, at the largest rank whose two factors and bias fit ``ratio`` of it."""
        groups = []
        for t, s in module_shapes(adapter).items():
            bias = s.d_out if s.bias else 0
            groups += singletons(adapter, t, self.name, int((cfg.ratio * s.parameters - bias) // (s.d_in + s.d_out)))
        return groups

    def price(self, group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
        s = shapes[group.type]
        return group.rank * (s.d_in + s.d_out) + (s.d_out if s.bias else 0)

    def factors(self, adapter: ModelAdapter, group: GroupPlan, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> Factors:
        (layer, t), = group.members
        weight = adapter.weight(layer, t).to(device)
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        r = group.rank
        return vh[:r].to(weight.dtype), (u[:, :r] * s[:r]).to(weight.dtype)

    def install(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, f: Factors | None) -> None:
        (layer, t), = group.members
        d_in, d_out = adapter.shape(t)
        bias = adapter.bias(layer, t)
        kw = like(adapter, group)
        module = TwoFactorLinear(d_in, d_out, group.rank, bias is not None, **kw)
        with torch.no_grad():
            if f is not None:
                module.down.weight.copy_(f[0])
                module.up.weight.copy_(f[1])
            if f is not None and bias is not None:
                module.up.bias.copy_(bias)
        adapter.set_module(layer, t, module.requires_grad_(False))

    def size_text(self, group: GroupPlan) -> str:
        return f"own rank {group.rank}"


#: the method preset that compresses with it (methods name their kind)
OWN_RANK = Method("own-rank", "all", {"grouping": "consecutive", "allocation": "uniform", "decomposition": "plain"},
                  summary="every module alone at a lower rank (a test kind)")
