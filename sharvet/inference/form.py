"""The inference form of a compressed model: the same function in fewer, larger matmuls.

:func:`prepare` rewrites a loaded sharvet model in place. Each step is exact algebra (only rounding changes):

- **sigma into V**: ``(h * sigma) V^T = h (V diag(sigma))^T``, so every layer is two plain matmuls.
- **lambda into the norm**: ``(x_hat * g) * lambda = x_hat * (g * lambda)`` when every module reading a norm's output
  (q, k, v; gate, up) has the same lambda (unrefined models hold ones, Basis Sharing none); a LayerNorm's bias is
  scaled too. Refined q, k and v have three different lambdas: they stay ``x * lambda`` (under ``torch.compile``
  that multiply fuses into the norm's kernel; folding it into the basis would need a copy of the shared basis per
  layer).
- **lambda of down into up**: a gated MLP's down reads ``act(gate) * up``, so its lambda scales up's output rows:
  ``V_up <- diag(lambda_down) V_up`` (V is per layer: nothing shared is copied).
- **one first-stage matmul** for the modules of a layer that read the same input: ``x [U_q; U_k; U_v]^T`` once,
  then each module's slice times its V. The stacked matrix replaces the bases it stacks, one copy per distinct
  combination of bases, so it costs no memory where every layer that uses those bases uses them together (Basis
  Sharing's consecutive groups; types grouped alike). ``fuse="auto"`` stacks only such combinations;
  ``"always"`` stacks every layer's first stage, lambda folded in, copying bases where layers combine them
  differently (the same bytes read per token, more stored); ``"never"`` keeps the matmuls apart.
- ``fuse="grouped"``: the modules reading one input run, for a one-token decode step on a GPU, as two
  grouped Triton launches (all first stages, then all second stages; :mod:`.grouped`), lambda applied inside the
  kernel and no basis copied; other steps take each module's own forward.
- ``fuse="best"`` (the default): ``grouped`` where its kernels run (Triton, every weight on an NVIDIA GPU), else
  ``auto`` (:func:`resolve_fuse`).

- **ranks padded to a multiple of** ``align`` (8 by default) with zero basis rows and zero V columns: the same
  output, and every matmul gets tensor-core-friendly sizes. The planner's ranks are arbitrary (1433, 2229, ...);
  a bf16 GEMM whose inner or row dimension is not a multiple of 8 misses cuBLAS's aligned kernels (the 8B-shape
  prefill at ratio 0.7 ran at 0.28x dense with such ranks, H200, 2026-11-30). Costs at most ``align - 1`` rows per
  basis and columns per V.

- **the layers' weights packed** into a few large allocations (:mod:`.arena`): a GPU allocator's rounding of
  hundreds of odd-sized factors cost 0.08-0.09 GiB at 8B shapes; the values do not change.

Every module kind other than :class:`~sharvet.modules.SharedBasisLinear` (whole shared matrices, FiPS projections)
is left as it is. Bytes read per token (what bounds decode) are unchanged by all of this: each layer reads its
bases whether they are stacked or not.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..accounting import unique_parameter_count
from ..models import ModelAdapter, adapter_for
from ..modules import SharedBasisLinear
from ..rank_padding import DEFAULT_ALIGN, pad_ranks
from . import grouped
from .arena import pack_parameters
from .grouped import GroupedGatedMLP, GroupedSlice, GroupedStages
from .modules import FusedFirstStage, StageSlice

FUSE_MODES = ("best", "auto", "always", "never", "grouped")


def resolve_fuse(model: nn.Module, fuse: str) -> str:
    """``best``: ``grouped`` where its kernels run and were measured (Triton, every weight on an NVIDIA GPU), else
    ``auto``. On an H200 at LLaMA-3-8B shapes the grouped decode step ran at 1.24x / 1.07x / 1.40x dense at ratios
    0.5 / 0.7 / 0.3, against ``auto``'s 1.01x / 0.88x / 1.20x, with prefill and batches alike (``docs/results.md``,
    2026-11-30; 1.36x / 1.15x / 1.65x with the tenth session's tiles); on a CPU the grouped form has no kernels and
    ``auto``'s stacked matmuls are the faster."""
    if fuse != "best":
        return fuse
    on_gpu = torch.version.hip is None and all(p.device.type == "cuda" for p in model.parameters())
    return "grouped" if grouped.available() and on_gpu and not grouped.INTERPRET else "auto"


@dataclass
class InferenceReport:
    """What :func:`prepare` changed (stored on the model as ``sharvet_inference``)."""

    fuse: str
    sigma_absorbed: int = 0
    lambda_into_norm: int = 0
    lambda_into_source: int = 0
    lambda_kept: int = 0
    #: bases (and the V of each module using them) padded to a multiple of ``align``, and the zeros added
    ranks_padded: int = 0
    padding_parameters: int = 0
    fused_layers: dict[str, int] = field(default_factory=dict)
    #: stacked first-stage matrices stored (each replaces the bases it stacks or, for "always", copies them)
    fused_matrices: int = 0
    #: parameters added by stacking (copies of shared bases made by ``fuse="always"``)
    extra_parameters: int = 0
    #: allocations the decoder layers' weights were packed into (:mod:`.arena`)
    arenas: int = 0
    #: gated MLPs whose activation and product run inside gate and up's launch (:class:`GroupedGatedMLP`)
    gated_mlps: int = 0

    def line(self) -> str:
        fused = ", ".join(f"{k} in {n} layers" for k, n in self.fused_layers.items()) or "none"
        return (f"inference form (fuse={self.fuse}): sigma absorbed in {self.sigma_absorbed} modules; lambda folded "
                f"into {self.lambda_into_norm} norms and {self.lambda_into_source} up projections, kept in "
                f"{self.lambda_kept} modules; {self.ranks_padded} ranks padded ({self.padding_parameters:+,} zeros); "
                f"first stages fused: {fused} ({self.fused_matrices} stacked matrices, "
                f"{self.extra_parameters:+,} parameters); layer weights packed into {self.arenas} arenas"
                + (f"; gate+up gated (silu(gate) * up in one launch) in {self.gated_mlps} layers"
                   if self.gated_mlps else "")
                + (f"; grouped kernels: {grouped.describe()}" if self.fuse == "grouped" else ""))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float()


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(like.dtype), requires_grad=False)


def _scaled_rows(p: nn.Parameter | None, scale: torch.Tensor) -> nn.Parameter | None:
    if p is None:
        return None
    s = _f32(scale)
    return _param(_f32(p) * (s[:, None] if p.dim() == 2 else s), p)


def _fold_into_sources(adapter: ModelAdapter, report: InferenceReport) -> None:
    for layer in range(adapter.num_layers):
        for target, source in adapter.input_scale_sources.items():
            m, src = adapter.get_module(layer, target), adapter.get_module(layer, source)
            if isinstance(m, SharedBasisLinear) and isinstance(src, SharedBasisLinear) and m.scale is not None:
                src.v = _scaled_rows(src.v, m.scale)
                src.bias = _scaled_rows(src.bias, m.scale)
                m.scale = None
                report.lambda_into_source += 1


def _fold_into_norms(adapter: ModelAdapter, report: InferenceReport) -> None:
    consumers = adapter.types_by_input()
    for layer in range(adapter.num_layers):
        for key, types in consumers.items():
            norm = adapter.input_norm(layer, key)
            modules = [adapter.get_module(layer, t) for t in types]
            if norm is None or not all(isinstance(m, SharedBasisLinear) for m in modules):
                continue
            scales = [m.scale for m in modules if m.scale is not None]
            if not scales:
                continue
            ones = torch.ones_like(scales[0])
            full = [ones if m.scale is None else m.scale for m in modules]
            if any(not torch.equal(full[0], s) for s in full[1:]):
                continue
            weight = getattr(norm, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.shape != full[0].shape:
                continue
            offset = adapter.norm_weight_offset  # the norm scales by offset + weight
            with torch.no_grad():
                norm.weight.copy_((_f32(weight) + offset) * _f32(full[0]) - offset)
                bias = getattr(norm, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.copy_(_f32(bias) * _f32(full[0]))
            for m in modules:
                m.scale = None
            report.lambda_into_norm += 1


def _stack(modules: list[SharedBasisLinear]) -> nn.Parameter:
    rows = [_f32(m.basis) * (1.0 if m.scale is None else _f32(m.scale)) for m in modules]
    return _param(torch.cat(rows), modules[0].basis)


def _fuse(adapter: ModelAdapter, fuse: str, report: InferenceReport) -> None:
    """Stack the first stages of modules reading one input, where ``fuse`` allows (see the module docstring)."""
    combos: dict[tuple, list[int]] = defaultdict(list)
    combos_of_basis: dict[int, set] = defaultdict(set)
    consumers = adapter.types_by_input()
    for layer in range(adapter.num_layers):
        for key, types in consumers.items():
            modules = [adapter.get_module(layer, t) for t in types]
            if len(modules) > 1 and all(isinstance(m, SharedBasisLinear) for m in modules):
                scaled = any(m.scale is not None for m in modules)
                combo = (key, tuple(types), tuple(id(m.basis) for m in modules), layer if scaled else None)
                combos[combo].append(layer)
                for m in modules:
                    combos_of_basis[id(m.basis)].add(combo)
            else:
                for m in modules:
                    if isinstance(m, SharedBasisLinear):
                        combos_of_basis[id(m.basis)].add(None)  # used unfused: stacking would copy it

    def free(combo: tuple) -> bool:
        return combo[3] is None and all(combos_of_basis[b] == {combo} for b in combo[2])

    for combo, layers in combos.items():
        if fuse == "never" or (fuse == "auto" and not free(combo)):
            continue
        key, types = combo[0], combo[1]
        weight = None
        for layer in layers:
            modules = [adapter.get_module(layer, t) for t in types]
            weight = _stack(modules) if weight is None else weight
            stage = FusedFirstStage(weight, [m.rank for m in modules])
            for i, (t, m) in enumerate(zip(types, modules)):
                adapter.set_module(layer, t, StageSlice(stage, i, m.v, m.bias))
            if any(m.scale is not None for m in modules):
                report.lambda_kept -= sum(m.scale is not None for m in modules)  # now inside the stacked matrix
        name = "+".join(types)
        report.fused_layers[name] = report.fused_layers.get(name, 0) + len(layers)
        report.fused_matrices += 1


def _gated_pair(adapter: ModelAdapter, layer: int, types: list[str], modules: list[SharedBasisLinear]) -> bool:
    """Whether ``modules`` are a SiLU-gated MLP's gate and up, without bias, and the gated launch is asked for
    (:data:`grouped.GATED_MLP`)."""
    return (grouped.GATED_MLP and adapter.gated_mlp is not None and types == list(adapter.gated_mlp[:2])
            and adapter.mlp_activation(layer) == "silu" and all(m.bias is None for m in modules))


def _group(adapter: ModelAdapter, report: InferenceReport) -> None:
    """Every layer input's compressed modules behind one :class:`GroupedStages` (``fuse="grouped"``); a gated MLP's
    gate and up also as one gated launch, where asked for (:class:`GroupedGatedMLP`)."""
    consumers = adapter.types_by_input()
    for layer in range(adapter.num_layers):
        gated_group = None
        for types in consumers.values():
            modules = [adapter.get_module(layer, t) for t in types]
            if not all(isinstance(m, SharedBasisLinear) for m in modules):
                continue
            group = GroupedStages(modules, gated=_gated_pair(adapter, layer, types, modules))
            gated_group = group if group.gated else gated_group
            for i, t in enumerate(types):
                adapter.set_module(layer, t, GroupedSlice(group, i))
            name = "+".join(types)
            report.fused_layers[name] = report.fused_layers.get(name, 0) + 1
        if gated_group is not None:  # last: the MLP's modules are no longer where the adapter looks for them
            down = adapter.get_module(layer, adapter.gated_mlp[2])
            adapter.set_mlp(layer, GroupedGatedMLP(adapter.mlp(layer), gated_group, down))
            report.gated_mlps += 1


@torch.no_grad()
def prepare(model: nn.Module, *, fuse: str = "best", align: int = DEFAULT_ALIGN) -> nn.Module:
    """Rewrite a loaded sharvet model into its inference form, in place, and return it.

    ``generate`` and every forward keep working on any device; the logits equal the reference forward's up to
    rounding. Call it after loading and after any refinement (it absorbs sigma, which training needs apart).
    ``align`` pads every rank to a multiple of it (1: no padding). What changed: ``model.sharvet_inference`` (an
    :class:`InferenceReport`). The result is for running, not saving (:func:`sharvet.checkpoint.save` refuses it).
    """
    if fuse not in FUSE_MODES:
        raise ValueError(f"fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    fuse = resolve_fuse(model, fuse)
    if fuse == "grouped" and any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError('fuse="grouped" reads weights where they lie: it does not take offloaded weights (meta '
                         "tensors filled in by hooks); place the whole model on the GPU first")
    if hasattr(model, "peft_config"):
        raise ValueError("the inference form does not take LoRA adapters (a peft model); run it as loaded")
    adapter = adapter_for(model)
    report = InferenceReport(fuse)
    for m in model.modules():
        if isinstance(m, SharedBasisLinear) and m.sigma is not None:
            m.absorb_sigma()
            report.sigma_absorbed += 1
    _fold_into_sources(adapter, report)
    _fold_into_norms(adapter, report)
    report.lambda_kept = sum(isinstance(m, SharedBasisLinear) and m.scale is not None for m in model.modules())
    padding = pad_ranks(model, align)
    report.ranks_padded, report.padding_parameters = padding.bases, padding.zeros
    before = unique_parameter_count(model)
    if fuse == "grouped":
        _group(adapter, report)
    else:
        _fuse(adapter, fuse, report)
    report.extra_parameters = unique_parameter_count(model) - before
    report.arenas = pack_parameters(adapter.layers.parameters())
    for m in model.modules():
        if isinstance(m, GroupedStages):
            m.rebuild()  # its pointer tables point at where the weights were
    model.sharvet_inference = report
    return model.eval()
