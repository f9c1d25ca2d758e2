"""The budget accountant: what a plan stores, counted the same way for every method.

Every method (SharVeT, Basis Sharing, SEQ / CYCLE, FiPS) is planned against the same number: ``ratio``
times the original parameters (weights and biases) of the model's linear modules in its decoder layers.
This module prices a plan *before* anything is built, kind by kind, so the realised ratio of every row
of a comparison is known, printed and checked (``compress`` verifies it against the built model):

- ``basis``: the basis once, then per layer V, sigma and lambda when stored, and the bias;
- ``dense``: the one shared matrix and bias (a whole shared layer, as Takase & Kiyono share it);
- ``sparse``: the basis once, then per member its kept values *and* their int32 indices, and the bias.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .allocation import LayerLayout
from .models import ModelAdapter
from .plan import CompressionPlan, GroupPlan

#: stored numbers per kept sparse entry: the value and its index (int32, as wide as a float32)
SPARSE_ENTRY_COST = 2


@dataclass(frozen=True)
class ModuleShape:
    d_in: int
    d_out: int
    bias: bool

    @property
    def parameters(self) -> int:
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)


def module_shapes(adapter: ModelAdapter) -> dict[str, ModuleShape]:
    """Shape and bias of every module type (read from layer 0; identical in every layer)."""
    return {t: ModuleShape(*adapter.shape(t), adapter.bias(0, t) is not None) for t in adapter.type_names}


def sparse_width(shape: ModuleShape, width: int) -> tuple[int, str]:
    """Rows of a FiPS projection and its orientation: the basis sits on the side of size ``width``."""
    if shape.d_in == width:
        return shape.d_out, "in"
    if shape.d_out == width:
        return shape.d_in, "out"
    raise ValueError(f"a ({shape.d_in} x {shape.d_out}) module has no side of the basis width {width}")


def group_parameters(group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
    """Stored parameters of one group of a plan."""
    size = len(group.layers)
    if group.kind == "basis":
        s = shapes[group.type]
        return dataclasses.replace(layout, bias=s.bias).group_cost(group.rank, size, s.d_in, s.d_out)
    if group.kind == "dense":
        return shapes[group.type].parameters
    if group.kind == "sparse":
        biases = sum(shapes[t].d_out for _, t in group.members if shapes[t].bias)
        width = sparse_basis_width(group, shapes)
        return group.rank * width + SPARSE_ENTRY_COST * sum(group.nnz or []) + biases
    raise ValueError(f"unknown group kind {group.kind!r}")


def sparse_basis_width(group: GroupPlan, shapes: dict[str, ModuleShape]) -> int:
    """The model width: the side every member type of a FiPS group has in common."""
    common = set.intersection(*({shapes[t].d_in, shapes[t].d_out} for t in group.type_list))
    if not common:
        raise ValueError(f"module types {group.type_list} share no dimension: FiPS cannot share a basis")
    return min(common)


@dataclass(frozen=True)
class BudgetReport:
    """Target and realised parameters of the compressed linear modules."""

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
        return {**dataclasses.asdict(self), "budget": self.budget, "realised_ratio": self.realised_ratio}


def account(plan: CompressionPlan, shapes: dict[str, ModuleShape], num_layers: int) -> BudgetReport:
    """Price ``plan``; refuses a plan that leaves a module out or exceeds the budget."""
    covered = sorted(m for g in plan.groups for m in g.members)
    expected = sorted((layer, t) for t in shapes for layer in range(num_layers))
    if covered != expected:
        raise ValueError("the plan does not cover every linear module of every layer exactly once")
    original = num_layers * sum(s.parameters for s in shapes.values())
    planned = sum(group_parameters(g, shapes, plan.layout) for g in plan.groups)
    report = BudgetReport(plan.ratio, original, planned)
    if planned > report.budget:
        raise ValueError(f"the {plan.method} plan exceeds its budget: {report.line()}")
    return report
