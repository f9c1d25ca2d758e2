"""After refinement: fold sigma into V (paper, after eq. 12) and record what was done in the plan.

``W ~ Lambda U Sigma V^T`` becomes ``Lambda U V'^T`` with ``V' = V Sigma``: one multiply fewer per
forward and ``r`` parameters fewer per layer. The plan's layout must say ``sigma=False`` afterwards,
otherwise ``checkpoint.load`` would rebuild modules with a sigma vector the file does not have.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..accounting import linear_parameter_count, stored_parameter_count
from ..models import adapter_for
from ..pipeline import attach_plan, plan_of
from ..plan import PlanSettings
from .guard import require_finite
from .vectors import shared_basis_modules


def finalize(model: nn.Module, record: dict[str, Any] | None = None) -> nn.Module:
    """Absorb sigma, freeze everything, fix the plan (layout, parameter counts) and record ``record``.

    ``record`` (typically ``RefineResult.record()``: the refine config and the final losses) is stored
    as ``config.sharvet["settings"]["refinement"]`` so a saved checkpoint says how it was tuned.
    Raises :class:`~sharvet.refinement.guard.NonFiniteLossError` if any tensor is NaN or inf: a
    diverged model must not reach ``checkpoint.save``.
    """
    require_finite(model.named_parameters(), "refined model")
    modules = shared_basis_modules(model)
    for _, m in modules:
        m.absorb_sigma()
    for p in model.parameters():
        p.requires_grad_(False)
    plan = plan_of(model)
    plan.layout = dataclasses.replace(plan.layout, sigma=False)
    _update_counts(model, plan.settings, plan.types)
    if record is not None:
        plan.settings.refinement = record
    attach_plan(model, plan)
    return model


def _update_counts(model: nn.Module, settings: PlanSettings, types: list[str]) -> None:
    """Absorption removes ``r`` parameters per layer: keep the stored parameter report truthful."""
    if settings.parameters is None:
        return
    settings.parameters = dataclasses.replace(
        settings.parameters, linear_compressed=linear_parameter_count(adapter_for(model), types),
        model_compressed=stored_parameter_count(model))
