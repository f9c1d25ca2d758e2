"""The compression pipeline: similarity -> grouping -> allocation -> decomposition -> module swap.

``CompressionConfig.method`` names a preset of :mod:`sharvet.methods`; planning is in
:mod:`sharvet.planning`, the decomposition of each group kind in :mod:`sharvet.decomposition` and the
module swap in :mod:`sharvet.install`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from . import methods
from .accounting import ParameterReport, linear_parameter_count, stored_parameter_count
from .allocation import LayerLayout
from .budget import BudgetReport
from .calibration import CalibrationStats
from .decomposition.sparse import FipsConfig
from .grouping import STRATEGIES, SIMILARITY_BASED
from .models import adapter_for
from .plan import CompressionPlan
from .similarity import SimilarityConfig, TypeSimilarity

DECOMPOSITIONS = ("whitened", "plain")
ALLOCATIONS = ("adaptive", "uniform")


@dataclass
class CompressionConfig:
    """Everything that decides the compressed model; stored in the checkpoint for reproducibility."""

    ratio: float = 0.8
    method: str = "sharvet"
    grouping: str = "spectral"
    #: groups per shared module type; None = num_layers // 2 (the paper searches L/3 .. L/2)
    k: int | None = None
    allocation: str = "adaptive"
    mu: float = 0.9
    #: eq. 10 sums the pairwise similarities; the reference averages them. Mean is the default: with a
    #: sum, a group's share shrinks with the square of its size, starving exactly the large groups.
    eta_reduce: str = "mean"
    decomposition: str = "whitened"
    #: module types shared across layers; None = the adapter's default (the rest: per-layer SVD)
    shared_types: tuple[str, ...] | None = None
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    layout: LayerLayout = field(default_factory=LayerLayout)
    fips: FipsConfig = field(default_factory=FipsConfig)
    seed: int = 0

    @classmethod
    def preset(cls, method: str = "sharvet", variants: tuple[str, ...] = (), **explicit) -> "CompressionConfig":
        """The method's preset, then the ablation variants, then every explicit (non-None) field."""
        return methods.apply(cls, method, variants, **explicit)

    @property
    def kind(self) -> str:
        """How groups are stored: basis (SharVeT, Basis Sharing), dense (SEQ, CYCLE), sparse (FiPS)."""
        return methods.method(self.method).kind

    def validate(self, num_layers: int | None = None, type_names: list[str] | None = None) -> None:
        """Fail fast, with one clear line, before any heavy work."""
        if not 0 < self.ratio <= 1:
            raise ValueError(f"--ratio must be in (0, 1], got {self.ratio}")
        methods.method(self.method)
        if self.kind == "dense" and self.k is not None:
            raise ValueError(f"{self.method} derives its number of shared sets from the ratio; --k does not apply")
        if self.fips.rank is not None and self.fips.rank < 1 or self.fips.steps < 0:
            raise ValueError("the FiPS basis size must be >= 1 and its steps >= 0")
        if self.grouping not in STRATEGIES:
            raise ValueError(f"unknown grouping {self.grouping!r}; choose from {', '.join(sorted(STRATEGIES))}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose from {', '.join(ALLOCATIONS)}")
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(f"unknown decomposition {self.decomposition!r}; choose from {', '.join(DECOMPOSITIONS)}")
        if self.eta_reduce not in ("mean", "sum"):
            raise ValueError(f"eta_reduce must be 'mean' or 'sum', got {self.eta_reduce!r}")
        if not 0 <= self.mu <= 1:
            raise ValueError(f"--mu must be in [0, 1], got {self.mu}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"--k must be at least 1, got {self.k}")
        if num_layers is not None and self.k is not None and self.k > num_layers:
            raise ValueError(f"--k {self.k} is larger than the number of layers ({num_layers})")
        if type_names is not None and self.shared_types is not None:
            unknown = sorted(set(self.shared_types) - set(type_names))
            if unknown:
                raise ValueError(f"unknown module types {unknown}; this model has {', '.join(type_names)}")

    def groups_per_type(self, num_layers: int) -> int:
        return self.k if self.k is not None else max(1, num_layers // 2)

    @property
    def needs_similarity(self) -> bool:
        return self.grouping in SIMILARITY_BASED or (self.kind == "basis" and self.allocation == "adaptive")

    @property
    def needs_stats(self) -> bool:
        """Input statistics: whitened SVD / weighted mean, or CKA."""
        whitened = self.decomposition == "whitened" and self.kind != "sparse"
        return whitened or (self.needs_similarity and self.similarity.use_cka)

    @property
    def needs_ids(self) -> bool:
        """Calibration tokens themselves: FiPS refines on captured MLP-block inputs."""
        return self.kind == "sparse" and self.fips.steps > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

    ``calibration_ids`` are needed by FiPS only (its block-wise refinement runs on captured inputs).
    """
    from .build import build
    from .decomposition.sparse import capture_mlp_inputs
    from .planning import plan_compression

    adapter = adapter_for(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if cfg.needs_stats and stats is None:
        raise ValueError("this configuration needs calibration statistics (whitened SVD, weighted mean or CKA)")
    if cfg.needs_ids and calibration_ids is None:
        raise ValueError("FiPS refinement needs calibration token ids (or set its steps to 0)")
    plan, sims = plan_compression(adapter, stats, cfg, device=device, progress=progress)
    types = adapter.type_names
    linear_before = linear_parameter_count(adapter, types)
    model_before = stored_parameter_count(model)
    inputs = capture_mlp_inputs(adapter, calibration_ids, cfg.fips.tokens, device=device, progress=progress) \
        if cfg.needs_ids else None
    log = build(adapter, plan, stats, whitened=cfg.decomposition == "whitened", fips=cfg.fips, mlp_inputs=inputs,
                seed=cfg.seed, device=device, progress=progress)
    if log:
        plan.settings["fips_reconstruction"] = log
    report = ParameterReport(
        linear_original=linear_before,
        linear_compressed=linear_parameter_count(adapter, types),
        model_original=model_before,
        model_compressed=stored_parameter_count(model),
        target_ratio=cfg.ratio,
    )
    budget = BudgetReport(**{k: plan.settings["budget"][k] for k in ("target_ratio", "original", "planned")})
    if (report.linear_original, report.linear_compressed) != (budget.original, budget.planned):
        raise RuntimeError(f"built model ({report.linear_compressed:,} of {report.linear_original:,}) "
                           f"disagrees with the budget accountant ({budget.line()})")
    plan.settings["parameters"] = report.to_dict()
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
