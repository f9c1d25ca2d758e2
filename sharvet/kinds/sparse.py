"""``sparse``: FiPS -- one basis over several module types of consecutive blocks, a sparse projection each.

The shared types (the MLP's by default) of a group of layers share one basis of size ``rank`` on the
model-width side; each member keeps ``nnz[i]`` entries of its projection, priced as the value *and* its
int32 index. The types FiPS does not share are kept as they are (``dense`` groups of one). Building
refines each group on its MLP blocks' captured inputs (:mod:`sharvet.decomposition.sparse`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..accounting import ModuleShape, module_shapes
from ..allocation import LayerLayout
from ..calibration import CalibrationStats
from ..decomposition.sparse import SparseFactors, capture_mlp_inputs, reconstruct, sparse_init
from ..grouping import GroupingRequest, make_groups
from ..models import ModelAdapter
from ..modules import SparseProjectionLinear
from ..similarity import TypeSimilarity
from .base import GroupPlan, Kind, PlanConfig, bias_copy, like, similarity_of, singletons

#: stored numbers per kept sparse entry: the value and its index (int32, as wide as a float32)
SPARSE_ENTRY_COST = 2


def sparse_width(shape: ModuleShape, width: int) -> tuple[int, str]:
    """Rows of a FiPS projection and its orientation: the basis sits on the side of size ``width``."""
    if shape.d_in == width:
        return shape.d_out, "in"
    if shape.d_out == width:
        return shape.d_in, "out"
    raise ValueError(f"a ({shape.d_in} x {shape.d_out}) module has no side of the basis width {width}")


def sparse_basis_width(group: GroupPlan, shapes: dict[str, ModuleShape]) -> int:
    """The model width: the side every member type of a FiPS group has in common."""
    common = set.intersection(*({shapes[t].d_in, shapes[t].d_out} for t in group.type_list))
    if not common:
        raise ValueError(f"module types {group.type_list} share no dimension: FiPS cannot share a basis")
    return min(common)


def sparse_nnz(group: GroupPlan, shapes: dict[str, ModuleShape], budget: float) -> list[int]:
    """Kept entries per member at one density, so the group costs at most ``budget``."""
    width = sparse_basis_width(group, shapes)
    capacity = [sparse_width(shapes[t], width)[0] * group.rank for _, t in group.members]
    biases = sum(shapes[t].d_out for _, t in group.members if shapes[t].bias)
    entries = (budget - group.rank * width - biases) / SPARSE_ENTRY_COST
    if entries < len(capacity):
        raise ValueError(f"the budget cannot hold a FiPS basis of size {group.rank} plus sparse projections; "
                         "use a smaller --fips-rank or a larger ratio")
    density = min(1.0, entries / sum(capacity))
    return [max(1, math.floor(density * c)) for c in capacity]


class SparseKind(Kind):
    name = "sparse"
    whitens = False
    record_key = "fips_reconstruction"

    def needs_ids(self, cfg: PlanConfig) -> bool:
        return cfg.fips.steps > 0  # the block-wise refinement runs on captured MLP-block inputs

    def plan(self, adapter: ModelAdapter, cfg: PlanConfig, shared: list[str],
             sims: dict[str, TypeSimilarity], stats: CalibrationStats | None = None) -> list[GroupPlan]:
        """The shared types of consecutive blocks share one basis; the rest are kept as they are."""
        shapes = module_shapes(adapter)
        num_layers = adapter.num_layers
        kept = [t for t in adapter.type_names if t not in shared]
        total = num_layers * sum(s.parameters for s in shapes.values())
        shared_budget = cfg.ratio * total - num_layers * sum(shapes[t].parameters for t in kept)
        if shared_budget <= 0:
            raise ValueError(f"ratio {cfg.ratio} leaves no budget for the shared types {shared} "
                             "(the others are kept)")
        fused = "+".join(shared)
        width = sparse_basis_width(GroupPlan(fused, [0], 1, self.name), shapes)
        rank = min(cfg.fips.rank or width, width)
        request = GroupingRequest(num_layers, cfg.groups_per_type(num_layers), similarity_of(sims, shared[0]),
                                  cfg.seed)
        groups = [g for t in kept for g in singletons(adapter, t, "dense")]
        for layers in make_groups(cfg.grouping, request):
            group = GroupPlan(fused, layers, rank, self.name)
            group.nnz = sparse_nnz(group, shapes, shared_budget * len(layers) / num_layers)
            groups.append(group)
        return groups

    def price(self, group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
        """The basis once, then per member its kept values and their indices, and the bias."""
        biases = sum(shapes[t].d_out for _, t in group.members if shapes[t].bias)
        width = sparse_basis_width(group, shapes)
        return group.rank * width + SPARSE_ENTRY_COST * sum(group.nnz or []) + biases

    def prepare(self, adapter: ModelAdapter, cfg: PlanConfig, ids: torch.Tensor | None, *,
                device: torch.device, progress: bool) -> list[torch.Tensor] | None:
        """Every layer's MLP-block inputs on the calibration tokens (None: no refinement)."""
        if not self.needs_ids(cfg):
            return None
        return capture_mlp_inputs(adapter, ids, cfg.fips.tokens, device=device, progress=progress)

    def factors(self, adapter: ModelAdapter, group: GroupPlan, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> SparseFactors:
        shapes = module_shapes(adapter)
        width = sparse_basis_width(group, shapes)
        mats = []
        for layer, t in group.members:
            w = adapter.weight(layer, t).to(device)
            mats.append(w if sparse_width(shapes[t], width)[1] == "in" else w.T)
        return sparse_init(mats, group.rank, group.nnz)

    def install(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, f: SparseFactors | None) -> None:
        shapes = module_shapes(adapter)
        width = sparse_basis_width(group, shapes)
        kw = like(adapter, group)
        if f is None:
            f = SparseFactors(torch.zeros(group.rank, width, **kw), [torch.zeros(n, **kw) for n in group.nnz],
                              [torch.arange(n) for n in group.nnz])
        basis = nn.Parameter(f.basis.to(**kw), requires_grad=False)
        for (layer, t), values, index in zip(group.members, f.values, f.index):
            rows, orientation = sparse_width(shapes[t], width)
            adapter.set_module(layer, t, SparseProjectionLinear(
                basis, values.to(**kw), index.to(kw["device"]), rows, orientation=orientation,
                bias=bias_copy(adapter, layer, t)))

    def build(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, factors: SparseFactors,
              prepared: list[torch.Tensor] | None, cfg: PlanConfig) -> dict[str, Any] | None:
        """Install, then minimise the group's MLP blocks' reconstruction error on the captured inputs."""
        if prepared is None:
            self.install(adapter, group, layout, factors)
            return None
        blocks = [adapter.mlp(layer) for layer in group.layers]
        xs = [prepared[layer] for layer in group.layers]
        with torch.no_grad():
            targets = [block(x) for block, x in zip(blocks, xs)]
        self.install(adapter, group, layout, factors)
        modules = [adapter.get_module(layer, t) for layer, t in group.members]
        params = [modules[0].basis] + [m.values for m in modules]
        before, after = reconstruct(blocks, xs, targets, params, cfg.fips, seed=cfg.seed)
        return {"layers": group.layers, "error_before": before, "error_after": after}

    def size_text(self, group: GroupPlan) -> str:
        return f"basis {group.rank}, {sum(group.nnz or []):,} sparse entries"
