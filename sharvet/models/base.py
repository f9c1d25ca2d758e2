"""Architecture adapters: the one place that knows where a family keeps its linear modules.

Every other part of sharvet talks about module *types* ("q", "gate", ...) and layer indices; the adapter
maps those to real ``nn.Module`` objects, exposes weights in the ``torch.nn.Linear`` convention
``(d_out, d_in)`` whatever the family stores, and swaps modules in and out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from accelerate.utils import has_offloaded_params
from torch import nn


def module_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>`` detached; one accelerate offloaded to disk (big-model loading) is read onto the host."""
    t = getattr(module, name, None)
    if t is not None and t.device.type == "meta" and has_offloaded_params(module):
        return module._hf_hook.weights_map[name].to(t.dtype)
    return None if t is None else t.detach()


class _ReachedFirstLayer(Exception):
    """Stops a forward pass at the first decoder layer once its inputs are captured."""


@dataclass(frozen=True)
class ModuleType:
    """One linear module type of a decoder layer.

    ``path`` is relative to the decoder layer; ``input_key`` names the activation the module reads, so
    modules that read the same tensor (q/k/v, gate/up) share one set of calibration statistics.
    """

    name: str
    path: str
    input_key: str


class ModelAdapter:
    """Base adapter for decoder-only transformers whose layers live in one ``nn.ModuleList``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    module_types: ClassVar[tuple[ModuleType, ...]]
    layers_path: ClassVar[str]
    base_model_path: ClassVar[str]
    #: module types shared across layers by default (the rest get per-layer SVD)
    default_shared: ClassVar[tuple[str, ...]]
    #: the MLP block of a decoder layer (relative path) and its module types (FiPS shares these)
    mlp_path: ClassVar[str] = "mlp"
    mlp_types: ClassVar[tuple[str, ...]]
    #: the norm (path relative to a decoder layer) whose output is an input key, where that output feeds only the
    #: modules of that key: a channel scaling shared by all of them folds into the norm's weight (and bias)
    input_norms: ClassVar[dict[str, str]] = {}
    #: what the input norms add to their stored weight before scaling (Gemma's RMSNorm scales by ``1 + weight``)
    norm_weight_offset: ClassVar[float] = 0.0
    #: module type -> the type whose output rows multiply its input elementwise (a gated MLP's down reads
    #: act(gate) * up), so a scaling of the first's input folds into the second's output rows
    input_scale_sources: ClassVar[dict[str, str]] = {}
    #: a gated MLP, ``down(act(gate(x)) * up(x))``: its (gate, up, down) module types, and the MLP's attribute
    #: holding ``act`` (the inference form may fuse act and the product into gate and up's kernel)
    gated_mlp: ClassVar[tuple[str, str, str] | None] = None
    gated_mlp_act: ClassVar[str] = "act_fn"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # ------------------------------------------------------------------ structure
    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.module_types]

    def module_type(self, name: str) -> ModuleType:
        for t in self.module_types:
            if t.name == name:
                return t
        raise KeyError(f"unknown module type {name!r} for {self.family}; known: {', '.join(self.type_names)}")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def base_model(self) -> nn.Module:
        """The decoder stack without the LM head (calibration never needs logits)."""
        return self.model.get_submodule(self.base_model_path)

    def module_path(self, layer: int, type_name: str) -> str:
        return f"{self.layers_path}.{layer}.{self.module_type(type_name).path}"

    def mlp(self, layer: int) -> nn.Module:
        """The MLP block of a layer: FiPS measures reconstruction error on its output."""
        return self.layers[layer].get_submodule(self.mlp_path)

    def set_mlp(self, layer: int, module: nn.Module) -> None:
        self.model.set_submodule(f"{self.layers_path}.{layer}.{self.mlp_path}", module)

    def mlp_activation(self, layer: int) -> str | None:
        """A gated MLP's activation by name (``silu`` for torch's and transformers' SiLU modules), None if the MLP
        is not gated."""
        if self.gated_mlp is None:
            return None
        name = type(getattr(self.mlp(layer), self.gated_mlp_act, None)).__name__.lower()
        return "silu" if name in ("silu", "siluactivation") else name

    def input_norm(self, layer: int, input_key: str) -> nn.Module | None:
        """The norm module whose output is ``input_key`` in ``layer`` (None: unknown, or not a norm's output)."""
        path = self.input_norms.get(input_key)
        return None if path is None else self.layers[layer].get_submodule(path)

    def get_module(self, layer: int, type_name: str) -> nn.Module:
        return self.model.get_submodule(self.module_path(layer, type_name))

    def set_module(self, layer: int, type_name: str, module: nn.Module) -> None:
        self.model.set_submodule(self.module_path(layer, type_name), module)

    # ------------------------------------------------------------------ weights
    def weight(self, layer: int, type_name: str) -> torch.Tensor:
        """Weight as ``(d_out, d_in)``, detached, on its own device and dtype (offloaded: read onto the host)."""
        return module_tensor(self.get_module(layer, type_name), "weight")

    def bias(self, layer: int, type_name: str) -> torch.Tensor | None:
        return module_tensor(self.get_module(layer, type_name), "bias")

    def home(self, layer: int, type_name: str) -> torch.device:
        """Where a module's weights are used: their device, or the host for weights accelerate keeps on disk."""
        module = self.get_module(layer, type_name)
        return torch.device("cpu") if has_offloaded_params(module) else next(module.parameters()).device

    def shape(self, type_name: str) -> tuple[int, int]:
        """``(d_in, d_out)`` of a module type (identical in every layer)."""
        module = self.get_module(0, type_name)
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            return int(module.in_features), int(module.out_features)
        d_out, d_in = self.weight(0, type_name).shape
        return int(d_in), int(d_out)

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {t: self.shape(t) for t in self.type_names}

    def input_keys(self) -> list[str]:
        return list(dict.fromkeys(t.input_key for t in self.module_types))

    def types_by_input(self) -> dict[str, list[str]]:
        """Input key -> the module types reading it (q, k, v read one input), in the order a layer runs them."""
        return {k: [t.name for t in self.module_types if t.input_key == k] for k in self.input_keys()}

    def first_module_for_input(self, input_key: str) -> str:
        return next(t.name for t in self.module_types if t.input_key == input_key)

    # ------------------------------------------------------------------ layer by layer
    def layer_kinds(self) -> list[str]:
        """Each layer's attention kind (``config.layer_types``: sliding-window or full; one kind where the model does
        not say): layers of one kind take the same mask and rotary tables."""
        kinds = getattr(self.model.config, "layer_types", None)
        return list(kinds) if kinds else ["all"] * self.num_layers

    def first_layer_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple[tuple, dict]]]:
        """The hidden states the model passes its first decoder layer, and the other arguments of a call for each
        layer kind (:meth:`layer_kinds`): a sliding-window layer's mask is not a full-attention layer's.

        The model's own forward runs with its decoder layers up to the first layer of the last kind swapped for
        catchers (GPTQ's "catcher", one per layer) that record the call and pass the hidden states on unchanged,
        so embeddings, position ids, rotary ``(cos, sin)`` and the masks (GPT-2 passes its mask positionally)
        come from the family's code for whatever transformers version is installed, and no layer computes.
        """
        kinds = self.layer_kinds()
        firsts = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
        last = max(firsts.values())
        captured: dict[str, Any] = {}

        def catcher(index: int):  # noqa: ANN202 - a stand-in for the layer's forward
            def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
                hidden = args[0] if args else kwargs.pop("hidden_states")
                captured.setdefault("hidden", hidden)
                if firsts[kinds[index]] == index:
                    captured[kinds[index]] = (args[1:], kwargs)
                if index == last:
                    raise _ReachedFirstLayer
                return hidden
            return forward

        layers = list(self.layers)[:last + 1]
        saved = [layer.__dict__.get("forward") for layer in layers]  # accelerate's hooks live there
        for i, layer in enumerate(layers):
            layer.forward = catcher(i)
        try:
            self.base_model(input_ids=input_ids, use_cache=False)
        except _ReachedFirstLayer:
            pass
        finally:
            for layer, forward in zip(layers, saved):
                if forward is None:
                    del layer.forward
                else:
                    layer.forward = forward
        return captured.pop("hidden"), captured

    def run_layer(self, layer: int, hidden: torch.Tensor, rest: tuple[tuple, dict[str, Any]]) -> torch.Tensor:
        """One decoder layer's output hidden states (older transformers return a tuple, newer a tensor)."""
        args, kwargs = rest
        out = self.layers[layer](hidden, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out
