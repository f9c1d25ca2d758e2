"""Human-readable description of a compressed model (SUMMARY.md, ``sharvet info``)."""
from __future__ import annotations

from .plan import CompressionPlan, GroupPlan


def _size(g: GroupPlan) -> str:
    if g.kind == "dense":
        return "whole matrix" if len(g.layers) > 1 else "kept"
    if g.kind == "sparse":
        return f"basis {g.rank}, {sum(g.nnz or []):,} sparse entries"
    return f"rank {g.rank}"


def plan_table(plan: CompressionPlan) -> list[str]:
    lines = ["| type | group | layers | stored as |", "|---|---|---|---|"]
    seen: set[int] = set()
    for t in plan.types:
        for i, g in enumerate(plan.groups_of(t)):
            if id(g) not in seen:
                seen.add(id(g))
                lines.append(f"| {g.type} | {i} | {','.join(map(str, g.layers))} | {_size(g)} |")
    return lines


def render(plan: CompressionPlan, model_id: str = "") -> str:
    s = plan.settings
    params = s.get("parameters", {})
    head = [
        "# sharvet compressed model",
        "",
        f"- source model: {model_id or s.get('model_id', '?')}",
        f"- method: {plan.method}; grouping: {s.get('grouping')}; allocation: {s.get('allocation')} "
        f"(mu={s.get('mu')}); decomposition: {s.get('decomposition')}; seed: {s.get('seed')}",
        f"- shared module types: {', '.join(s.get('shared_types', []))} (k={s.get('k')} groups each); "
        "the others: one SVD per layer",
        f"- per-layer vectors: sigma={plan.layout.sigma}, lambda={plan.layout.scale}",
    ]
    if "budget" in s:
        head.append(f"- budget accountant: realised ratio {s['budget']['realised_ratio']:.4f} "
                    f"({s['budget']['planned']:,} of {s['budget']['original']:,} linear parameters)")
    if params:
        head += [
            f"- target ratio {plan.ratio} of the compressed linear modules",
            f"- linear modules: {params['linear_original']:,} -> {params['linear_compressed']:,} "
            f"(ratio {params['linear_ratio']:.4f})",
            f"- whole model: {params['model_original']:,} -> {params['model_compressed']:,} "
            f"(ratio {params['model_ratio']:.4f}; embeddings, norms and LM head are not compressed)",
        ]
    return "\n".join(head + ["", "## Groups and ranks", ""] + plan_table(plan)) + "\n"
