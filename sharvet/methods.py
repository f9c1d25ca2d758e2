"""Every compared method and SharVeT variant as a named preset of :class:`sharvet.config.CompressionConfig`.

``--method`` picks a preset (how groups are stored, grouping, allocation, what is shared, how the model
is fine-tuned); any explicit flag overrides it. ``--variant`` applies the paper's ablations on top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .allocation import LayerLayout


@dataclass(frozen=True)
class Method:
    """A compression method: its group kind, its config defaults and its fine-tuning mode."""

    kind: str  # a kind registered in sharvet.kinds: basis | dense | sparse
    #: which module types are shared by default: the adapter's default, all, or the MLP types
    shares: str
    defaults: dict[str, Any] = field(default_factory=dict)
    #: refinement mode used by ``--refine`` unless ``--refine-mode`` says otherwise
    refine_mode: str = "lora"
    summary: str = ""
    #: calibration text unless ``--calib-data`` says otherwise; the paper's methods calibrate on WikiText-2
    calibration: str = "wikitext2"
    #: passes over the fine-tuning windows unless ``--epochs`` says otherwise: the paper trains every model 2
    refine_epochs: int = 2


#: what the paper calibrates on (and what runs without a method, e.g. the similarity figures, use)
PAPER_CALIBRATION = Method.calibration


METHODS: dict[str, Method] = {
    "sharvet": Method("basis", "default", {"grouping": "spectral", "allocation": "adaptive"}, "both",
                      "similarity grouping, adaptive ranks, lambda/sigma refinement (the paper)"),
    "sharvet-plus": Method("basis", "default", {"grouping": "spectral", "allocation": "adaptive"}, "factors",
                           "SharVeT's model, calibrated on WikiText-2 and C4 (the whitening then fits more than "
                           "one kind of text); refinement also trains every layer's V (beyond the paper, nothing "
                           "added to the budget; four epochs; the default)", calibration="wikitext2+c4",
                           refine_epochs=4),
    "basis-sharing": Method("basis", "default", {"grouping": "consecutive", "allocation": "uniform",
                                                 "layout": LayerLayout(sigma=False, scale=False)}, "lora",
                            "Wang et al. 2025: consecutive groups, whitened SVD, uniform ranks, LoRA"),
    "seq": Method("dense", "all", {"grouping": "consecutive", "allocation": "uniform"}, "lora",
                  "Takase & Kiyono 2023: whole matrices shared by consecutive layers, LoRA"),
    "cycle": Method("dense", "all", {"grouping": "cycle", "allocation": "uniform"}, "lora",
                    "Takase & Kiyono 2023: layer i uses set i mod M, LoRA"),
    "cycle-rev": Method("dense", "all", {"grouping": "cycle-rev", "allocation": "uniform"}, "lora",
                        "Takase & Kiyono 2023: cycle, the last sets in reverse order, LoRA"),
    "fips": Method("sparse", "mlp", {"grouping": "consecutive", "allocation": "uniform",
                                     "decomposition": "plain"}, "lora",
                   "FiPS: MLP basis shared by consecutive blocks, sparse projections, LoRA"),
}

#: the paper's SharVeT ablations decided at compression time (Tables 3, 7, 8)
COMPRESS_VARIANTS: dict[str, dict[str, Any]] = {
    "R": {"grouping": "random"},
    "I": {"allocation": "uniform"},
    "C": {"similarity": {"use_cosine": False}},
    "F": {"similarity": {"use_frobenius": False}},
    "K": {"similarity": {"use_cka": False}},
    "Agg": {"grouping": "agglomerative"},
    "DB": {"grouping": "dbscan"},
}
#: ablations decided at refinement time (Tables 3, 9): they map to refinement settings
REFINE_VARIANTS: dict[str, dict[str, Any]] = {
    "L": {"lm_only": True},
    "T": {"refine": False},
    "lambda": {"mode": "lambda"},
    "sigma": {"mode": "sigma"},
    # not a paper ablation: LoRA instead of the vectors on SharVeT's own model, which isolates the effect
    # of the refinement from that of the compression in the comparison with the LoRA baselines (Figure 3)
    "LoRA": {"mode": "lora"},
    # not a paper ablation: eq. 13's KD and feature weights matched to the LM loss's scale (the paper's
    # stated rule, App. D) instead of the reference implementation's fixed 0.001 and 5
    "M": {"match_loss_scales": True},
}
VARIANTS = {**COMPRESS_VARIANTS, **REFINE_VARIANTS}


#: methods the paper's ablation variants apply to (SharVeT's compression)
SHARVET_FAMILY = ("sharvet", "sharvet-plus")
#: what ``sharvet compress`` runs unless ``--method`` says otherwise
DEFAULT_METHOD = "sharvet-plus"


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def check_variants(names: list[str] | tuple[str, ...], method_name: str = "sharvet") -> None:
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if names and method_name not in SHARVET_FAMILY:
        raise ValueError(f"variants are ablations of sharvet, not of {method_name!r}")


def preset_overrides(method_name: str, variants: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Config fields set by the method and the compression-time variants (similarity merged)."""
    check_variants(variants, method_name)
    fields = dict(method(method_name).defaults)
    for v in variants:
        for key, value in COMPRESS_VARIANTS.get(v, {}).items():
            fields[key] = {**fields.get(key, {}), **value} if key == "similarity" else value
    return fields


def refine_overrides(variants: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Refinement settings implied by the variants (``refine: False`` for T)."""
    out: dict[str, Any] = {}
    for v in variants:
        out.update(REFINE_VARIANTS.get(v, {}))
    return out


def describe() -> str:
    """One line per method, for ``--help``."""
    return "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items())

