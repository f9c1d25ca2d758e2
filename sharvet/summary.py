"""Human-readable description of a compressed model (SUMMARY.md, ``sharvet info``)."""
from __future__ import annotations

from .plan import CompressionPlan


def plan_table(plan: CompressionPlan) -> list[str]:
    lines = ["| type | group | layers | rank |", "|---|---|---|---|"]
    for t in plan.types:
        for i, g in enumerate(plan.groups_of(t)):
            lines.append(f"| {t} | {i} | {','.join(map(str, g.layers))} | {g.rank} |")
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
    if params:
        head += [
            f"- target ratio {plan.ratio} of the compressed linear modules",
            f"- linear modules: {params['linear_original']:,} -> {params['linear_compressed']:,} "
            f"(ratio {params['linear_ratio']:.4f})",
            f"- whole model: {params['model_original']:,} -> {params['model_compressed']:,} "
            f"(ratio {params['model_ratio']:.4f}; embeddings, norms and LM head are not compressed)",
        ]
    return "\n".join(head + ["", "## Groups and ranks", ""] + plan_table(plan)) + "\n"
