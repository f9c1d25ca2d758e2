"""Human-readable description of a compressed model (SUMMARY.md, ``sharvet info``)."""
from __future__ import annotations

from .kinds import kind
from .plan import CompressionPlan


def plan_table(plan: CompressionPlan) -> list[str]:
    lines = ["| type | group | layers | stored as |", "|---|---|---|---|"]
    seen: set[int] = set()
    for t in plan.types:
        for i, g in enumerate(plan.groups_of(t)):
            if id(g) not in seen:
                seen.add(id(g))
                lines.append(f"| {g.type} | {i} | {','.join(map(str, g.layers))} | {kind(g.kind).size_text(g)} |")
    return lines


def render(plan: CompressionPlan, model_id: str = "") -> str:
    s = plan.settings
    c = s.config
    head = [
        "# sharvet compressed model",
        "",
        f"- source model: {model_id or s.model_id or '?'}",
        f"- method: {plan.method}; grouping: {c and c.grouping}; allocation: {c and c.allocation} "
        f"(mu={c and c.mu}); decomposition: {c and c.decomposition}; seed: {c and c.seed}",
        f"- shared module types: {', '.join(c.shared_types or []) if c else ''} (k={c and c.k} groups each); "
        "the others: one SVD per layer",
        f"- per-layer vectors: sigma={plan.layout.sigma}, lambda={plan.layout.scale}",
    ]
    if s.budget is not None:
        head.append(f"- budget accountant: realised ratio {s.budget.realised_ratio:.4f} "
                    f"({s.budget.planned:,} of {s.budget.original:,} linear parameters)")
    if s.parameters is not None:
        p = s.parameters
        head += [
            f"- target ratio {plan.ratio} of the compressed linear modules",
            f"- linear modules: {p.linear_original:,} -> {p.linear_compressed:,} (ratio {p.linear_ratio:.4f})",
            f"- whole model: {p.model_original:,} -> {p.model_compressed:,} "
            f"(ratio {p.model_ratio:.4f}; embeddings, norms and LM head are not compressed)",
        ]
    return "\n".join(head + ["", "## Groups and ranks", ""] + plan_table(plan)) + "\n"
