"""Swap a plan's groups into the model, each by its kind: used by compress and by checkpoint loading.

A factor source returns a group's decomposed form, or None to build an empty skeleton of the right
shapes (loading a checkpoint fills it from the safetensors file). Every group's shared tensor is one
``nn.Parameter`` held by all its members.
"""
from __future__ import annotations

from typing import Any, Callable

from .allocation import LayerLayout
from .kinds import GroupPlan, kind
from .models import ModelAdapter
from .plan import CompressionPlan

FactorSource = Callable[[GroupPlan], Any]


def install_group(adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, factors: Any) -> None:
    kind(group.kind).install(adapter, group, layout, factors)


def install_plan(adapter: ModelAdapter, plan: CompressionPlan, factors: FactorSource) -> None:
    """Install every group of ``plan`` with the factors ``factors(group)`` (None: empty skeleton)."""
    for group in plan.groups:
        install_group(adapter, group, plan.layout, factors(group))
