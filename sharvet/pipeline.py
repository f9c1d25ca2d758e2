"""The compression pipeline: similarity -> grouping -> allocation -> decomposition -> module swap."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .accounting import ParameterReport, linear_parameter_count, unique_parameter_count
from .allocation import LayerLayout, allocate_ranks
from .calibration import CalibrationStats
from .decomposition import GroupFactors, decompose_group
from .grouping import STRATEGIES, SIMILARITY_BASED, GroupingRequest, make_groups
from .models import ModelAdapter, adapter_for
from .modules import SharedBasisLinear
from .plan import CompressionPlan, GroupPlan
from .similarity import SimilarityConfig, TypeSimilarity, model_similarity

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
    seed: int = 0

    def validate(self, num_layers: int | None = None, type_names: list[str] | None = None) -> None:
        """Fail fast, with one clear line, before any heavy work."""
        if not 0 < self.ratio <= 1:
            raise ValueError(f"--ratio must be in (0, 1], got {self.ratio}")
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
        return self.grouping in SIMILARITY_BASED or self.allocation == "adaptive"

    @property
    def needs_stats(self) -> bool:
        return self.decomposition == "whitened" or (self.needs_similarity and self.similarity.use_cka)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CompressionResult:
    plan: CompressionPlan
    report: ParameterReport
    similarity: dict[str, TypeSimilarity]


def plan_compression(
    adapter: ModelAdapter, stats: CalibrationStats | None, cfg: CompressionConfig, *,
    device: torch.device | str = "cpu", progress: bool = True,
) -> tuple[CompressionPlan, dict[str, TypeSimilarity]]:
    """Decide groups and ranks for every module type (no weights are changed)."""
    types = adapter.type_names
    cfg.validate(adapter.num_layers, types)
    shared = list(cfg.shared_types if cfg.shared_types is not None else adapter.default_shared)
    sims = model_similarity(adapter, shared, stats, cfg.similarity, device=device, progress=progress) \
        if cfg.needs_similarity and shared else {}
    k = cfg.groups_per_type(adapter.num_layers)
    groups: list[GroupPlan] = []
    for t in types:
        d_in, d_out = adapter.shape(t)
        layout = dataclasses.replace(cfg.layout, bias=adapter.bias(0, t) is not None)
        if t in shared:
            sim = sims[t].joint if t in sims else None
            layer_groups = make_groups(cfg.grouping, GroupingRequest(adapter.num_layers, k, sim, cfg.seed))
            ranks = allocate_ranks(layer_groups, cfg.ratio, d_in, d_out, layout,
                                   adaptive=cfg.allocation == "adaptive", mu=cfg.mu, similarity=sim,
                                   reduce=cfg.eta_reduce)
        else:
            layer_groups = [[layer] for layer in range(adapter.num_layers)]
            ranks = allocate_ranks(layer_groups, cfg.ratio, d_in, d_out, layout, adaptive=False)
        groups += [GroupPlan(t, g, r) for g, r in zip(layer_groups, ranks)]
    settings = {**cfg.to_dict(), "shared_types": shared, "k": k}
    return CompressionPlan(cfg.method, cfg.ratio, cfg.layout, groups, settings), sims


FactorSource = Callable[[GroupPlan], GroupFactors | None]


def install_plan(adapter: ModelAdapter, plan: CompressionPlan, factors: FactorSource) -> None:
    """Swap every planned module for a SharedBasisLinear; one basis Parameter per group.

    ``factors`` returns the SVD factors of a group, or None to build an empty skeleton (for loading).
    """
    for group in plan.groups:
        d_in, d_out = adapter.shape(group.type)
        ref = adapter.get_module(group.layers[0], group.type)
        dtype, device = ref.weight.dtype, ref.weight.device
        f = factors(group)
        if f is None:
            f = GroupFactors(
                basis=torch.zeros(group.rank, d_in, dtype=dtype, device=device),
                sigma=torch.ones(group.rank, dtype=dtype, device=device),
                v=[torch.zeros(d_out, group.rank, dtype=dtype, device=device) for _ in group.layers],
            )
        basis = nn.Parameter(f.basis.to(device, dtype), requires_grad=False)
        for layer, v in zip(group.layers, f.v):
            bias = adapter.bias(layer, group.type)
            sigma = f.sigma.to(device, dtype)
            v = v.to(device, dtype)
            module = SharedBasisLinear(
                basis,
                v if plan.layout.sigma else v * sigma,
                sigma=sigma.clone() if plan.layout.sigma else None,
                scale=torch.ones(d_in, dtype=dtype, device=device) if plan.layout.scale else None,
                bias=None if bias is None else bias.clone(),
            )
            adapter.set_module(layer, group.type, module)


def svd_factors(adapter: ModelAdapter, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> FactorSource:
    def factors(group: GroupPlan) -> GroupFactors:
        weights = [adapter.weight(layer, group.type).to(device) for layer in group.layers]
        xtx = None
        if whitened:
            key = adapter.module_type(group.type).input_key
            xtx = sum(stats.get(layer, key).xtx.to(device) for layer in group.layers)
        return decompose_group(weights, group.rank, xtx=xtx)

    return factors


@torch.no_grad()
def compress(
    model: nn.Module,
    stats: CalibrationStats | None,
    cfg: CompressionConfig,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> CompressionResult:
    """Compress ``model`` in place and return the plan and the realised parameter counts."""
    adapter = adapter_for(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if cfg.needs_stats and stats is None:
        raise ValueError("this configuration needs calibration statistics (whitened SVD or CKA)")
    plan, sims = plan_compression(adapter, stats, cfg, device=device, progress=progress)
    types = adapter.type_names
    linear_before = linear_parameter_count(adapter, types)
    model_before = unique_parameter_count(model)
    source = svd_factors(adapter, stats, cfg.decomposition == "whitened", device)
    bar = tqdm(total=len(plan.groups), desc="decomposition", unit="group", disable=not progress)
    for t in plan.types:
        # decompose a whole type before swapping it (its groups read the original weights), one type at
        # a time so peak memory holds one type's factors, not the whole model's
        type_plan = dataclasses.replace(plan, groups=plan.groups_of(t))
        computed = {}
        for g in type_plan.groups:
            computed[id(g)] = source(g)
            bar.update()
        install_plan(adapter, type_plan, lambda g: computed[id(g)])
    bar.close()
    report = ParameterReport(
        linear_original=linear_before,
        linear_compressed=linear_parameter_count(adapter, types),
        model_original=model_before,
        model_compressed=unique_parameter_count(model),
        target_ratio=cfg.ratio,
    )
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
