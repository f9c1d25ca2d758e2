"""Decide every group and its size for one method, within the budget (no weights are changed).

One planner per group kind; all of them answer to :func:`sharvet.budget.account`, so every method's
plan is priced the same way and never exceeds ``ratio`` times the original linear parameters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import torch

from .allocation import allocate_ranks
from .budget import ModuleShape, account, module_shapes, sparse_basis_width, sparse_width, SPARSE_ENTRY_COST
from .calibration import CalibrationStats
from .grouping import GroupingRequest, make_groups
from .methods import method
from .models import ModelAdapter
from .plan import CompressionPlan, GroupPlan
from .similarity import TypeSimilarity, model_similarity

if TYPE_CHECKING:
    from .pipeline import CompressionConfig

Planner = Callable[[ModelAdapter, "CompressionConfig", list[str], dict[str, TypeSimilarity]], list[GroupPlan]]


def shared_types(adapter: ModelAdapter, cfg: "CompressionConfig") -> list[str]:
    if cfg.shared_types is not None:
        return list(cfg.shared_types)
    shares = method(cfg.method).shares
    return list({"default": adapter.default_shared, "all": adapter.type_names, "mlp": adapter.mlp_types}[shares])


def _sim(sims: dict[str, TypeSimilarity], t: str) -> torch.Tensor | None:
    return sims[t].joint if t in sims else None


def _singletons(adapter: ModelAdapter, t: str, kind: str, rank: int = 0) -> list[GroupPlan]:
    return [GroupPlan(t, [layer], rank, kind) for layer in range(adapter.num_layers)]


def plan_basis(adapter: ModelAdapter, cfg: "CompressionConfig", shared: list[str],
               sims: dict[str, TypeSimilarity]) -> list[GroupPlan]:
    """SharVeT / Basis Sharing: shared types grouped and ranked (eqs. 9-11), the rest one SVD per layer."""
    groups: list[GroupPlan] = []
    k = cfg.groups_per_type(adapter.num_layers)
    for t in adapter.type_names:
        d_in, d_out = adapter.shape(t)
        layout = dataclasses.replace(cfg.layout, bias=adapter.bias(0, t) is not None)
        if t in shared:
            layer_groups = make_groups(cfg.grouping, GroupingRequest(adapter.num_layers, k, _sim(sims, t), cfg.seed))
            ranks = allocate_ranks(layer_groups, cfg.ratio, d_in, d_out, layout,
                                   adaptive=cfg.allocation == "adaptive", mu=cfg.mu, similarity=_sim(sims, t),
                                   reduce=cfg.eta_reduce)
        else:
            layer_groups = [[layer] for layer in range(adapter.num_layers)]
            ranks = allocate_ranks(layer_groups, cfg.ratio, d_in, d_out, layout, adaptive=False)
        groups += [GroupPlan(t, g, r) for g, r in zip(layer_groups, ranks)]
    return groups


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


def plan_dense(adapter: ModelAdapter, cfg: "CompressionConfig", shared: list[str],
               sims: dict[str, TypeSimilarity]) -> list[GroupPlan]:
    """SEQ / CYCLE / CYCLE-REV: M whole-matrix sets per shared type, the other types kept as they are."""
    shapes = module_shapes(adapter)
    total = sum(s.parameters for s in shapes.values())
    sets = dense_sets(cfg.ratio, adapter.num_layers, sum(shapes[t].parameters for t in shared) / total)
    groups: list[GroupPlan] = []
    for t in adapter.type_names:
        if t not in shared:
            groups += _singletons(adapter, t, "dense")
            continue
        layer_groups = make_groups(cfg.grouping, GroupingRequest(adapter.num_layers, sets, _sim(sims, t), cfg.seed))
        groups += [GroupPlan(t, g, 0, "dense") for g in layer_groups]
    return groups


def sparse_nnz(group: GroupPlan, shapes: dict[str, ModuleShape], budget: float) -> list[int]:
    """Kept entries per member at one density, so the group costs at most ``budget``."""
    width = sparse_basis_width(group, shapes)
    capacity = [sparse_width(shapes[t], width)[0] * group.rank for _, t in group.members]
    biases = sum(shapes[t].d_out for _, t in group.members if shapes[t].bias)
    entries = (budget - group.rank * width - biases) / SPARSE_ENTRY_COST
    if entries < len(capacity):
        raise ValueError(f"the budget cannot hold a FiPS basis of size {group.rank} plus sparse projections; "
                         "use a smaller --fips-rank or a larger ratio")
    density = min(1.0, entries / sum(capacity))
    return [max(1, math.floor(density * c)) for c in capacity]


def plan_sparse(adapter: ModelAdapter, cfg: "CompressionConfig", shared: list[str],
                sims: dict[str, TypeSimilarity]) -> list[GroupPlan]:
    """FiPS: the shared types of consecutive blocks share one basis; the rest are kept as they are."""
    shapes = module_shapes(adapter)
    num_layers = adapter.num_layers
    kept = [t for t in adapter.type_names if t not in shared]
    total = num_layers * sum(s.parameters for s in shapes.values())
    shared_budget = cfg.ratio * total - num_layers * sum(shapes[t].parameters for t in kept)
    if shared_budget <= 0:
        raise ValueError(f"ratio {cfg.ratio} leaves no budget for the shared types {shared} (the others are kept)")
    fused = "+".join(shared)
    probe = GroupPlan(fused, [0], 1, "sparse")
    width = sparse_basis_width(probe, shapes)
    rank = min(cfg.fips.rank or width, width)
    layer_groups = make_groups(cfg.grouping, GroupingRequest(num_layers, cfg.groups_per_type(num_layers),
                                                             _sim(sims, shared[0]), cfg.seed))
    groups = [g for t in kept for g in _singletons(adapter, t, "dense")]
    for layers in layer_groups:
        group = GroupPlan(fused, layers, rank, "sparse")
        group.nnz = sparse_nnz(group, shapes, shared_budget * len(layers) / num_layers)
        groups.append(group)
    return groups


PLANNERS: dict[str, Planner] = {"basis": plan_basis, "dense": plan_dense, "sparse": plan_sparse}


def plan_compression(
    adapter: ModelAdapter, stats: CalibrationStats | None, cfg: "CompressionConfig", *,
    device: torch.device | str = "cpu", progress: bool = True,
) -> tuple[CompressionPlan, dict[str, TypeSimilarity]]:
    """Groups and sizes for every module of every layer, priced by the budget accountant."""
    cfg.validate(adapter.num_layers, adapter.type_names)
    shared = shared_types(adapter, cfg)
    sims = model_similarity(adapter, shared, stats, cfg.similarity, device=device, progress=progress) \
        if cfg.needs_similarity and shared else {}
    groups = PLANNERS[cfg.kind](adapter, cfg, shared, sims)
    k = len({tuple(g.layers) for g in groups if shared and shared[0] in g.type_list})
    settings = {**cfg.to_dict(), "shared_types": shared, "k": k}
    plan = CompressionPlan(cfg.method, cfg.ratio, cfg.layout, groups, settings)
    plan.settings["budget"] = account(plan, module_shapes(adapter), adapter.num_layers).to_dict()
    return plan, sims
