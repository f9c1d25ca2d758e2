"""``dense``: SEQ / CYCLE / CYCLE-REV (Takase & Kiyono 2023) -- one whole matrix for every member.

Each shared type gets M sets (the most that fit the budget); a set's matrix starts as the
(activation-weighted) mean of its members' (:mod:`sharvet.decomposition.mean`). A group of one layer keeps
that layer's weight as it is, which is also how FiPS keeps the types it does not share.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..accounting import ModuleShape, module_shapes
from ..allocation import LayerLayout
from ..calibration import CalibrationStats
from ..decomposition import shared_matrix
from ..grouping import GroupingRequest, make_groups
from ..models import ModelAdapter
from ..modules import shared_linear
from ..similarity import TypeSimilarity
from .base import GroupPlan, Kind, PlanConfig, group_inputs, like, similarity_of, singletons

DenseFactors = tuple[torch.Tensor, torch.Tensor | None]


def dense_sets(ratio: float, num_layers: int, shared_fraction: float) -> int:
    """M of Takase & Kiyono: the most shared sets whose total stays within the budget.

    With every type shared the realised ratio is M / L, so ratios that are not multiples of 1 / L are
    rounded down (e.g. 0.7 and 0.5 are exact for 30 layers).
    """
    kept = 1.0 - shared_fraction
    sets = math.floor(num_layers * (ratio - kept) / shared_fraction + 1e-9)
    if sets < 1:
        raise ValueError(f"ratio {ratio} is too small for whole-matrix sharing: not even one shared set fits")
    return min(sets, num_layers)


class DenseKind(Kind):
    name = "dense"

    def validate(self, cfg: PlanConfig) -> None:
        if cfg.k is not None:
            raise ValueError(f"{cfg.method} derives its number of shared sets from the ratio; --k does not apply")

    def plan(self, adapter: ModelAdapter, cfg: PlanConfig, shared: list[str],
             sims: dict[str, TypeSimilarity], stats: CalibrationStats | None = None) -> list[GroupPlan]:
        """M whole-matrix sets per shared type, the other types kept as they are."""
        shapes = module_shapes(adapter)
        total = sum(s.parameters for s in shapes.values())
        sets = dense_sets(cfg.ratio, adapter.num_layers, sum(shapes[t].parameters for t in shared) / total)
        groups: list[GroupPlan] = []
        for t in adapter.type_names:
            if t not in shared:
                groups += singletons(adapter, t, self.name)
                continue
            request = GroupingRequest(adapter.num_layers, sets, similarity_of(sims, t), cfg.seed)
            groups += [GroupPlan(t, g, 0, self.name) for g in make_groups(cfg.grouping, request)]
        return groups

    def price(self, group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
        """The one shared matrix and bias (a whole shared layer, as Takase & Kiyono share it)."""
        return shapes[group.type].parameters

    def factors(self, adapter: ModelAdapter, group: GroupPlan, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> DenseFactors:
        weights = [adapter.weight(layer, group.type).to(device) for layer in group.layers]
        xtx = group_inputs(adapter, stats, group, device) if whitened else None
        biases = [adapter.bias(layer, group.type) for layer in group.layers]
        bias = None if biases[0] is None else torch.stack(biases).mean(0).to(device)
        return shared_matrix(weights, xtx), bias

    def install(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, f: DenseFactors | None) -> None:
        kw = like(adapter, group)
        if f is None:
            d_in, d_out = adapter.shape(group.type)
            bias = adapter.bias(group.layers[0], group.type)
            f = torch.zeros(d_out, d_in, **kw), None if bias is None else torch.zeros(d_out, **kw)
        weight, bias = (None if t is None else nn.Parameter(t.to(**kw), requires_grad=False) for t in f)
        for layer in group.layers:
            adapter.set_module(layer, group.type, shared_linear(weight, bias))

    def size_text(self, group: GroupPlan) -> str:
        return "whole matrix" if len(group.layers) > 1 else "kept"
