"""Decide every group and its size for one method, within the budget (no weights are changed).

The config's group kind plans (:meth:`sharvet.kinds.Kind.plan`); every plan answers to
:func:`sharvet.budget.account`, so every method's plan is priced the same way and never exceeds
``ratio`` times the original linear parameters.
"""
from __future__ import annotations

import dataclasses

import torch

from .accounting import module_shapes
from .budget import account
from .calibration import CalibrationStats
from .config import CompressionConfig
from .methods import method
from .models import ModelAdapter
from .plan import CompressionPlan, PlanSettings
from .similarity import TypeSimilarity, model_similarity


def shared_types(adapter: ModelAdapter, cfg: CompressionConfig) -> list[str]:
    if cfg.shared_types is not None:
        return list(cfg.shared_types)
    shares = method(cfg.method).shares
    return list({"default": adapter.default_shared, "all": adapter.type_names, "mlp": adapter.mlp_types}[shares])


def plan_compression(
    adapter: ModelAdapter, stats: CalibrationStats | None, cfg: CompressionConfig, *,
    device: torch.device | str = "cpu", progress: bool = True,
) -> tuple[CompressionPlan, dict[str, TypeSimilarity]]:
    """Groups and sizes for every module of every layer, priced by the budget accountant."""
    cfg.validate(adapter.num_layers, adapter.type_names)
    shared = shared_types(adapter, cfg)
    sims = model_similarity(adapter, shared, stats, cfg.similarity, device=device, progress=progress) \
        if cfg.needs_similarity and shared else {}
    groups = cfg.group_kind.plan(adapter, cfg, shared, sims, stats)
    k = len({tuple(g.layers) for g in groups if shared and shared[0] in g.type_list})
    realised = dataclasses.replace(cfg, shared_types=tuple(shared), k=k)
    plan = CompressionPlan(cfg.method, cfg.ratio, cfg.layout, groups, PlanSettings(config=realised))
    plan.settings.budget = account(plan, module_shapes(adapter), adapter.num_layers)
    return plan, sims
