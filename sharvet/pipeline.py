"""The compression pipeline: similarity -> grouping -> allocation -> decomposition -> module swap.

The config (:mod:`sharvet.config`) names a method preset (:mod:`sharvet.methods`) and through it a group
kind (:mod:`sharvet.kinds`); planning is in :mod:`sharvet.planning`, building in :mod:`sharvet.build`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .accounting import ParameterReport, linear_parameter_count, stored_parameter_count
from .build import build
from .calibration import CalibrationStats
from .config import CompressionConfig
from .models import adapter_for
from .plan import CompressionPlan
from .planning import plan_compression
from .similarity import TypeSimilarity


@dataclass
class CompressionResult:
    plan: CompressionPlan
    report: ParameterReport
    similarity: dict[str, TypeSimilarity]


@torch.no_grad()
def compress(
    model: nn.Module,
    stats: CalibrationStats | None,
    cfg: CompressionConfig,
    *,
    calibration_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> CompressionResult:
    """Compress ``model`` in place and return the plan and the realised parameter counts.

    ``calibration_ids`` are needed only by kinds that gather inputs themselves (FiPS refines its groups
    on captured MLP-block inputs).
    """
    adapter = adapter_for(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if cfg.needs_stats and stats is None:
        raise ValueError("this configuration needs calibration statistics (whitened SVD, weighted mean or CKA)")
    if cfg.needs_ids and calibration_ids is None:
        raise ValueError("FiPS refinement needs calibration token ids (or set its steps to 0)")
    start = time.perf_counter()
    plan, sims = plan_compression(adapter, stats, cfg, device=device, progress=progress)
    planned = time.perf_counter()
    types = adapter.type_names
    linear_before = linear_parameter_count(adapter, types)
    model_before = stored_parameter_count(model)
    prepared = cfg.group_kind.prepare(adapter, cfg, calibration_ids, device=device, progress=progress)
    plan.settings.records.update(build(adapter, plan, stats, cfg, prepared=prepared, device=device,
                                       progress=progress))
    plan.settings.stage_seconds = {"planning": round(planned - start, 1),
                                   "decomposition": round(time.perf_counter() - planned, 1)}
    report = ParameterReport(
        linear_original=linear_before,
        linear_compressed=linear_parameter_count(adapter, types),
        model_original=model_before,
        model_compressed=stored_parameter_count(model),
        target_ratio=cfg.ratio,
    )
    budget = plan.settings.budget
    if (report.linear_original, report.linear_compressed) != (budget.original, budget.planned):
        raise RuntimeError(f"built model ({report.linear_compressed:,} of {report.linear_original:,}) "
                           f"disagrees with the budget accountant ({budget.line()})")
    plan.settings.parameters = report
    attach_plan(model, plan)
    return CompressionResult(plan, report, sims)


def attach_plan(model: nn.Module, plan: CompressionPlan) -> None:
    """The plan travels in ``config.sharvet`` so ``save_pretrained``-style configs carry it."""
    model.config.sharvet = plan.to_dict()


def plan_of(model: nn.Module) -> CompressionPlan:
    d = getattr(model.config, "sharvet", None)
    if d is None:
        raise ValueError("this model was not compressed by sharvet (config has no 'sharvet' section)")
    return CompressionPlan.from_dict(d)
