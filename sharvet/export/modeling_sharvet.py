"""A SharVeT-compressed model for plain transformers, without sharvet installed.

sharvet copies this file into every checkpoint folder it saves, so the folder loads like any Hub model
with custom layers::

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

It needs only torch and transformers. The model is the original architecture's CausalLM with the
compressed modules swapped in, per the plan in config.json (the ``sharvet`` section; where each module
type lives and its shapes in ``sharvet_modules``), before the weights are read (``model.safetensors``, or
the shards named by ``model.safetensors.index.json``: transformers reads either). A tensor a group shares
is stored once; its other names are declared tied, so transformers points every member at the one loaded
tensor. The forwards repeat sharvet's op for op (same logits). LoRA adapters of a
refined checkpoint (``lora/``, peft's files) are applied on load, as peft's LoRA ``Linear`` computes them.
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import cached_file

#: the architecture the checkpoint was compressed from (sharvet writes it here when saving)
BASE_MODEL_TYPE = "llama"
#: where a refined checkpoint keeps its LoRA adapters (peft's ``adapter_config.json`` and weights)
ADAPTER_DIR = "lora"

_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]
_BaseModel = MODEL_FOR_CAUSAL_LM_MAPPING[_BaseConfig]


class SharedBasisLinear(nn.Module):
    """``y = ((x * lambda) U^T) * sigma V^T + b``; ``basis`` (U) is one Parameter held by the whole group."""

    def __init__(self, basis: nn.Parameter, d_out: int, *, sigma: bool, scale: bool, bias: bool) -> None:
        super().__init__()
        rank, d_in = basis.shape
        kw = {"dtype": basis.dtype, "device": basis.device}
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        self.basis = basis
        self.v = nn.Parameter(torch.zeros(d_out, rank, **kw))
        self.sigma = nn.Parameter(torch.ones(rank, **kw)) if sigma else None
        self.scale = nn.Parameter(torch.ones(d_in, **kw)) if scale else None
        self.bias = nn.Parameter(torch.zeros(d_out, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as sharvet's own: each vector scales the smaller side (activations for few tokens, weights for many)
        tokens = x.numel() // self.in_features
        basis, v = self.basis, self.v
        if self.scale is not None:
            if tokens > self.rank:
                basis = basis * self.scale
            else:
                x = x * self.scale
        h = F.linear(x, basis)
        if self.sigma is not None:
            if tokens > self.out_features:
                v = v * self.sigma
            else:
                h = h * self.sigma
        return F.linear(h, v, self.bias)


class SparseProjectionLinear(nn.Module):
    """FiPS: a basis shared by a group and a sparse projection P (``values`` at flat positions ``index``)."""

    def __init__(self, basis: nn.Parameter, nnz: int, rows: int, *, orientation: str, bias: bool) -> None:
        super().__init__()
        rank, width = basis.shape
        kw = {"dtype": basis.dtype, "device": basis.device}
        self.rows, self.rank, self.orientation = rows, rank, orientation
        self.in_features, self.out_features = (width, rows) if orientation == "in" else (rows, width)
        self.basis = basis
        self.values = nn.Parameter(torch.zeros(nnz, **kw))
        self.register_buffer("index", torch.zeros(nnz, dtype=torch.int32, device=basis.device))
        self.bias = nn.Parameter(torch.zeros(self.out_features, **kw)) if bias else None

    def projection(self) -> torch.Tensor:
        flat = self.values.new_zeros(self.rows * self.rank)
        return flat.index_put((self.index.long(),), self.values).view(self.rows, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.projection()
        if self.orientation == "in":
            return F.linear(F.linear(x, self.basis), p, self.bias)
        return F.linear(F.linear(x, p.T), self.basis.T, self.bias)


class LoraLinear(nn.Module):
    """A compressed module plus its LoRA pair, computed as peft's LoRA ``Linear`` does in eval mode."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        super().__init__()
        kw = _like(base)  # peft keeps the adapter in the layer's dtype, float32 for a half-precision layer
        if kw["dtype"] in (torch.float16, torch.bfloat16):
            kw["dtype"] = torch.float32
        self.base_layer = base
        self.lora_A = nn.Linear(a.shape[1], a.shape[0], bias=False, **kw)
        self.lora_B = nn.Linear(b.shape[1], b.shape[0], bias=False, **kw)
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.copy_(b)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        result = result + self.lora_B(self.lora_A(x)) * self.scaling
        return result.to(dtype)


class SharvetConfig(_BaseConfig):
    """The original model's config; its ``sharvet`` section holds the compression plan."""


def _like(module: nn.Module) -> dict:
    p = next(module.parameters())
    return {"dtype": p.dtype if p.is_floating_point() else torch.float32, "device": p.device}


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def install(model: nn.Module, plan: dict, where: dict) -> None:
    """Swap every group of ``plan`` into ``model`` as an empty skeleton of the stored shapes."""
    types = where["types"]

    def path(layer: int, t: str) -> str:
        return f"{where['layers']}.{layer}.{types[t]['path']}"

    for group in plan["groups"]:
        kind, names, layers = group.get("kind", "basis"), group["type"].split("+"), group["layers"]
        members = [(layer, t) for t in names for layer in layers]
        kw = _like(model.get_submodule(path(*members[0])))
        if kind == "basis":
            t = names[0]
            basis = nn.Parameter(torch.zeros(group["rank"], types[t]["in"], **kw))
            for layer in layers:
                _set(model, path(layer, t), SharedBasisLinear(
                    basis, types[t]["out"], sigma=plan["layout"]["sigma"], scale=plan["layout"]["scale"],
                    bias=types[t]["bias"]))
        elif kind == "dense":
            t = names[0]
            shared = nn.Linear(types[t]["in"], types[t]["out"], bias=types[t]["bias"], **kw)
            for layer in layers:
                module = nn.Linear(types[t]["in"], types[t]["out"], bias=types[t]["bias"], device="meta")
                module.weight, module.bias = shared.weight, shared.bias
                _set(model, path(layer, t), module)
        elif kind == "sparse":
            width = min(set.intersection(*({types[t]["in"], types[t]["out"]} for t in names)))
            basis = nn.Parameter(torch.zeros(group["rank"], width, **kw))
            for (layer, t), nnz in zip(members, group["nnz"]):
                orientation = "in" if types[t]["in"] == width else "out"
                rows = types[t]["out"] if orientation == "in" else types[t]["in"]
                _set(model, path(layer, t), SparseProjectionLinear(
                    basis, nnz, rows, orientation=orientation, bias=types[t]["bias"]))
        else:
            raise ValueError(f"group kind {kind!r} is unknown to this modeling file")


def shared_names(model: nn.Module) -> dict[str, str]:
    """``name -> first name`` of every parameter held under several names (a group's shared tensor)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


class SharvetForCausalLM(_BaseModel):
    """The original architecture's CausalLM with the compressed modules of config.json's plan."""

    config_class = SharvetConfig

    def __init__(self, config: SharvetConfig) -> None:
        super().__init__(config)
        install(self, config.sharvet, config.sharvet_modules)
        # declared where save_pretrained looks too, so a re-saved folder also stores each shared tensor once
        self._tied_weights_keys = {**(self._tied_weights_keys or {}), **shared_names(self)}
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=True)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        return {**super().get_expanded_tied_weights_keys(all_submodels=all_submodels), **shared_names(self)}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loading, then the LoRA adapters of a refined checkpoint (``lora/``) when it has them."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        config_file = cached_file(pretrained_model_name_or_path, f"{ADAPTER_DIR}/adapter_config.json",
                                  _raise_exceptions_for_missing_entries=False, **hub)
        if config_file is not None:
            weights = cached_file(pretrained_model_name_or_path, f"{ADAPTER_DIR}/adapter_model.safetensors", **hub)
            apply_lora(model, config_file, weights)
        return model


def apply_lora(model: nn.Module, config_file: str, weights_file: str) -> None:
    """Wrap every adapted module with its LoRA pair read from peft's files (refusing what peft added later)."""
    from safetensors.torch import load_file

    with open(config_file) as f:
        cfg = json.load(f)
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "lora_bias", "modules_to_save")
                   if cfg.get(k)]
    if unsupported or cfg.get("bias", "none") != "none":
        raise ValueError(f"{config_file}: LoRA settings {unsupported or ['bias']} are not supported here; "
                         "load this checkpoint with sharvet")
    state = load_file(weights_file)
    prefix = "base_model.model."
    scaling = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    for path in sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in state}):
        a, b = state.pop(f"{prefix}{path}.lora_A.weight"), state.pop(f"{prefix}{path}.lora_B.weight")
        _set(model, path, LoraLinear(model.get_submodule(path), a, b, scaling))
