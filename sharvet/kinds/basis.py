"""``basis``: SharVeT / Basis Sharing -- one low-rank basis U per group, V (and the vectors) per layer.

Shared types are grouped and ranked (eqs. 9-11) and decomposed by (whitened) SVD of the concatenated
weights (eqs. 2-3); the other types get one SVD per layer at the same ratio.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..accounting import ModuleShape
from ..allocation import LayerLayout, allocate_ranks, spectrum_ranks
from ..calibration import CalibrationStats
from ..decomposition import GroupFactors, decompose_group, group_energies
from ..grouping import GroupingRequest, make_groups
from ..models import ModelAdapter
from ..modules import SharedBasisLinear
from ..similarity import TypeSimilarity
from .base import GroupPlan, Kind, PlanConfig, bias_copy, group_inputs, like, similarity_of


class BasisKind(Kind):
    name = "basis"

    def needs_similarity(self, cfg: PlanConfig) -> bool:
        return cfg.allocation == "adaptive"  # eq. 10 ranks groups by their intra-group similarity

    def plan(self, adapter: ModelAdapter, cfg: PlanConfig, shared: list[str],
             sims: dict[str, TypeSimilarity], stats: CalibrationStats | None = None) -> list[GroupPlan]:
        groups: list[GroupPlan] = []
        k = cfg.groups_per_type(adapter.num_layers)
        for t in adapter.type_names:
            d_in, d_out = adapter.shape(t)
            layout = dataclasses.replace(cfg.layout, bias=adapter.bias(0, t) is not None)
            if t in shared:
                sim = similarity_of(sims, t)
                layer_groups = make_groups(cfg.grouping, GroupingRequest(adapter.num_layers, k, sim, cfg.seed))
            else:
                layer_groups = [[layer] for layer in range(adapter.num_layers)]
            if cfg.allocation == "spectrum":
                energies = [self._energies(adapter, t, g, stats, cfg) for g in layer_groups]
                ranks = spectrum_ranks(layer_groups, cfg.ratio, d_in, d_out, layout, energies, mu=cfg.mu)
            else:
                ranks = allocate_ranks(layer_groups, cfg.ratio, d_in, d_out, layout,
                                       adaptive=t in shared and cfg.allocation == "adaptive", mu=cfg.mu,
                                       similarity=similarity_of(sims, t), reduce=cfg.eta_reduce)
            groups += [GroupPlan(t, g, r, self.name) for g, r in zip(layer_groups, ranks)]
        return groups

    @staticmethod
    def _energies(adapter: ModelAdapter, type_name: str, layers: list[int], stats: CalibrationStats | None,
                  cfg: PlanConfig) -> torch.Tensor:
        """The group's truncation energies, whitened by its inputs when the decomposition is."""
        whitened = cfg.decomposition == "whitened"
        if whitened and stats is None:
            raise ValueError("spectrum allocation with whitened decomposition needs calibration statistics")
        group = GroupPlan(type_name, layers, 0)
        device = stats.get(layers[0], adapter.module_type(type_name).input_key).xtx.device if whitened else "cpu"
        weights = [adapter.weight(layer, type_name).to(device) for layer in layers]
        return group_energies(weights, sum(group_inputs(adapter, stats, group, device)) if whitened else None)

    def price(self, group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
        """The basis once, then per layer V, sigma and lambda when stored, and the bias."""
        s = shapes[group.type]
        return dataclasses.replace(layout, bias=s.bias).group_cost(group.rank, len(group.layers), s.d_in, s.d_out)

    def factors(self, adapter: ModelAdapter, group: GroupPlan, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> GroupFactors:
        weights = [adapter.weight(layer, group.type).to(device) for layer in group.layers]
        xtx = sum(group_inputs(adapter, stats, group, device)) if whitened else None
        return decompose_group(weights, group.rank, xtx=xtx)

    def install(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, f: GroupFactors | None) -> None:
        d_in, d_out = adapter.shape(group.type)
        kw = like(adapter, group)
        if f is None:
            f = GroupFactors(basis=torch.zeros(group.rank, d_in, **kw), sigma=torch.ones(group.rank, **kw),
                             v=[torch.zeros(d_out, group.rank, **kw) for _ in group.layers])
        basis = nn.Parameter(f.basis.to(**kw), requires_grad=False)
        sigma = f.sigma.to(**kw)
        for layer, v in zip(group.layers, f.v):
            v = v.to(**kw)
            adapter.set_module(layer, group.type, SharedBasisLinear(
                basis,
                v if layout.sigma else v * sigma,
                sigma=sigma.clone() if layout.sigma else None,
                scale=torch.ones(d_in, **kw) if layout.scale else None,
                bias=bias_copy(adapter, layer, group.type),
            ))

    def size_text(self, group: GroupPlan) -> str:
        return f"rank {group.rank}"
