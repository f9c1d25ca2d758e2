"""The budget accountant: what a plan stores, counted the same way for every method.

Every method (SharVeT, Basis Sharing, SEQ / CYCLE, FiPS) is planned against the same number: ``ratio``
times the original parameters (weights and biases) of the model's linear modules in its decoder layers.
A plan is priced *before* anything is built, each group by its kind (:meth:`sharvet.kinds.Kind.price`),
so the realised ratio of every row of a comparison is known, printed and checked (``compress`` verifies
it against the built model).
"""
from __future__ import annotations

from .accounting import BudgetReport, ModuleShape
from .allocation import LayerLayout
from .kinds import GroupPlan, kind
from .plan import CompressionPlan


def group_parameters(group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
    """Stored parameters of one group of a plan."""
    return kind(group.kind).price(group, shapes, layout)


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
