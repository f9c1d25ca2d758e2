"""Models at published shapes with random weights, compressed by the plan sharvet's planner makes for them."""
from __future__ import annotations

import torch
from torch import nn

from ..models import adapter_for
from ..modules import SharedBasisLinear

#: published shapes (the models' config.json); nothing is downloaded
SHAPES = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256, rope_theta=10000.0,
                 max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False),
}



def shape_config(shape: str):
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def random_model(config, dtype: torch.dtype, device: torch.device, seed: int) -> nn.Module:
    """transformers' own initialisation, run on ``device`` (an 8B model takes seconds on a GPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def plan_for(model: nn.Module, ratio: float, device: torch.device, method: str = "sharvet"):
    """The plan sharvet's planner makes for this model: the method's preset, and where it groups by similarity,
    structural similarity only (CKA needs calibration data)."""
    from ..config import CompressionConfig
    from ..planning import plan_compression
    from ..similarity import SimilarityConfig

    cfg = CompressionConfig.preset(method, ratio=ratio, similarity=SimilarityConfig(use_cka=False))
    return plan_compression(adapter_for(model), None, cfg, device=device, progress=False)[0]


@torch.no_grad()
def compressed_random(config, plan, dtype: torch.dtype, device: torch.device, seed: int) -> nn.Module:
    """A model with ``plan``'s modules installed and random factors (lambdas 1 +- 0.05, as after refinement)."""
    from ..install import install_plan

    model = random_model(config, dtype, device, seed)
    install_plan(adapter_for(model), plan, lambda _g: None)
    gen = torch.Generator(device=device).manual_seed(seed)
    for m in model.modules():
        if isinstance(m, SharedBasisLinear):
            for p in (m.basis, m.v):
                p.normal_(0.0, 0.02, generator=gen)
            if m.scale is not None:
                m.scale.normal_(1.0, 0.05, generator=gen)
    return model
