"""Swap a plan's groups into the model: one installer per group kind, used by compress and by load.

A factor source returns a group's decomposed form, or None to build an empty skeleton of the right
shapes (loading a checkpoint fills it from the safetensors file). Every group's shared tensor is one
``nn.Parameter`` held by all its members.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .allocation import LayerLayout
from .budget import module_shapes, sparse_basis_width, sparse_width
from .decomposition import GroupFactors
from .decomposition.sparse import SparseFactors
from .models import ModelAdapter
from .modules import SharedBasisLinear, SparseProjectionLinear, shared_linear
from .plan import CompressionPlan, GroupPlan

FactorSource = Callable[[GroupPlan], Any]


def _like(adapter: ModelAdapter, group: GroupPlan) -> dict:
    ref = adapter.get_module(*group.members[0])
    p = next(ref.parameters())
    return {"dtype": p.dtype if p.is_floating_point() else torch.float32, "device": p.device}


def _bias(adapter: ModelAdapter, layer: int, type_name: str) -> torch.Tensor | None:
    b = adapter.bias(layer, type_name)
    return None if b is None else b.clone()


def install_basis(adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, f: GroupFactors | None) -> None:
    d_in, d_out = adapter.shape(group.type)
    kw = _like(adapter, group)
    if f is None:
        f = GroupFactors(basis=torch.zeros(group.rank, d_in, **kw), sigma=torch.ones(group.rank, **kw),
                         v=[torch.zeros(d_out, group.rank, **kw) for _ in group.layers])
    basis = nn.Parameter(f.basis.to(**kw), requires_grad=False)
    sigma = f.sigma.to(**kw)
    for layer, v in zip(group.layers, f.v):
        v = v.to(**kw)
        adapter.set_module(layer, group.type, SharedBasisLinear(
            basis,
            v if layout.sigma else v * sigma,
            sigma=sigma.clone() if layout.sigma else None,
            scale=torch.ones(d_in, **kw) if layout.scale else None,
            bias=_bias(adapter, layer, group.type),
        ))


def install_dense(adapter: ModelAdapter, group: GroupPlan, _layout: LayerLayout,
                  f: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
    kw = _like(adapter, group)
    if f is None:
        d_in, d_out = adapter.shape(group.type)
        bias = adapter.bias(group.layers[0], group.type)
        f = torch.zeros(d_out, d_in, **kw), None if bias is None else torch.zeros(d_out, **kw)
    weight, bias = (None if t is None else nn.Parameter(t.to(**kw), requires_grad=False) for t in f)
    for layer in group.layers:
        adapter.set_module(layer, group.type, shared_linear(weight, bias))


def install_sparse(adapter: ModelAdapter, group: GroupPlan, _layout: LayerLayout, f: SparseFactors | None) -> None:
    shapes = module_shapes(adapter)
    width = sparse_basis_width(group, shapes)
    kw = _like(adapter, group)
    if f is None:
        f = SparseFactors(torch.zeros(group.rank, width, **kw), [torch.zeros(n, **kw) for n in group.nnz],
                          [torch.arange(n) for n in group.nnz])
    basis = nn.Parameter(f.basis.to(**kw), requires_grad=False)
    for (layer, t), values, index in zip(group.members, f.values, f.index):
        rows, orientation = sparse_width(shapes[t], width)
        adapter.set_module(layer, t, SparseProjectionLinear(
            basis, values.to(**kw), index.to(kw["device"]), rows, orientation=orientation,
            bias=_bias(adapter, layer, t)))


INSTALLERS = {"basis": install_basis, "dense": install_dense, "sparse": install_sparse}


def install_group(adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, factors: Any) -> None:
    INSTALLERS[group.kind](adapter, group, layout, factors)


def install_plan(adapter: ModelAdapter, plan: CompressionPlan, factors: FactorSource) -> None:
    """Install every group of ``plan`` with the factors ``factors(group)`` (None: empty skeleton)."""
    for group in plan.groups:
        install_group(adapter, group, plan.layout, factors(group))
