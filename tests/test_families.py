"""Every family an adapter claims besides LLaMA and GPT-2 (tested throughout), end to end on tiny random models: Qwen2
(biased q, k, v; tied embeddings, as Qwen2.5-0.5B), Qwen3 (per-head q/k norms, a head size of its own), Mistral (a
sliding window), Gemma, Gemma 2 and Gemma 3 text (norms scaling by ``1 + weight``, a GELU-gated MLP; from Gemma 2
on, norms around each block's output and layers of two attention kinds), the families on LLaMA's layout (Granite,
Helium, OLMo, Seed-OSS, SmolLM3), OLMo 2 and EXAONE 4 (norms after each block), Phi-3 (fused projections), StableLM
(both residual layouts) and Cohere (a parallel residual). Each compresses with the default method, computes the same
logits in every inference form, and loads back with them through ``sharvet.load`` and through plain transformers
(``trust_remote_code``, without sharvet); the default refinement trains, finalises and loads back as refined; where
a norm feeds the compressed modules, equal lambdas fold into it exactly as the family's norm computes."""
from __future__ import annotations

import copy

import pytest
import torch
from test_hub_export import _perturbed, remote_logits
from test_inference import compressed as inference_compressed
from test_streaming import tiny_config_model
from tiny import tokens

import sharvet
from sharvet import checkpoint
from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.inference import prepare
from sharvet.inference.form import FUSE_MODES
from sharvet.methods import DEFAULT_METHOD, method
from sharvet.models import adapter_for
from sharvet.pipeline import compress
from sharvet.refinement import RefineConfig, finalize, refine

FAMILIES = {"qwen2": {"tie_word_embeddings": True}, "qwen3": {"head_dim": 32}, "mistral": {"sliding_window": 8},
            "gemma": {"head_dim": 16}, "gemma2": {"head_dim": 16, "sliding_window": 8},
            "gemma3_text": {"head_dim": 16, "sliding_window": 8}, "granite": {"residual_multiplier": 0.5},
            "helium": {"head_dim": 16}, "olmo": {}, "seed_oss": {"head_dim": 16}, "olmo2": {}, "exaone4": {},
            "phi3": {"pad_token_id": 0}, "smollm3": {"pad_token_id": 0, "no_rope_layers": [1, 0, 1]},
            "stablelm": {"pad_token_id": 0}, "stablelm-parallel": {"pad_token_id": 0, "use_parallel_residual": True},
            "cohere": {"pad_token_id": 0}}


def _model(label: str) -> torch.nn.Module:
    """A tiny random model of ``label`` (a model type, or ``TYPE-variant`` for another config of it)."""
    return tiny_config_model(label.split("-")[0], **FAMILIES[label])


def _compressed(family: str) -> torch.nn.Module:
    model = _model(family)
    ids = tokens(4, 16)
    compress(model, collect_stats(adapter_for(model), ids, progress=False),
             CompressionConfig.preset(DEFAULT_METHOD, ratio=0.6, k=2), calibration_ids=ids, progress=False)
    return model


@pytest.fixture(scope="module")
def compressed() -> dict[str, torch.nn.Module]:
    """Each family compressed, every stored number then moved off its value (lambda, sigma and V as refined)."""
    out = {family: _compressed(family) for family in FAMILIES}
    for model in out.values():
        _perturbed(model)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_inference_form_computes_the_same_logits(family, compressed):
    model, ids = compressed[family], tokens(2, 16, seed=4)
    with torch.no_grad():
        ref = model(ids).logits
        for fuse in FUSE_MODES:
            torch.testing.assert_close(prepare(copy.deepcopy(model), fuse=fuse)(ids).logits, ref, atol=2e-5,
                                       rtol=1e-5, msg=lambda m: f"fuse={fuse}: {m}")


@pytest.mark.parametrize("family,folds", [("gemma", 2), ("gemma2", 2), ("olmo2", 0), ("phi3", 2), ("stablelm", 2),
                                          ("stablelm-parallel", 0), ("cohere", 0)])
def test_equal_lambdas_fold_only_into_the_norms_the_modules_read(family, folds):
    """Gemma's RMSNorms scale by ``1 + weight``: a lambda shared by a norm's readers folds in as ``(1 + w) * lambda
    - 1`` (from Gemma 2 on the MLP reads ``pre_feedforward_layernorm``); OLMo 2's norms follow each block, so none
    folds; Phi-3's fused qkv and gate_up each fold into the norm they read; StableLM's LayerNorms take lambda into
    weight and bias, except with a parallel residual (one norm feeds all five). The logits stay the reference's."""
    model, ids = inference_compressed(lambdas="equal", family=lambda _: _model(family))
    with torch.no_grad():
        ref, fast = model(ids).logits, prepare(copy.deepcopy(model), fuse="never")
        assert fast.sharvet_inference.lambda_into_norm == folds * adapter_for(model).num_layers
        torch.testing.assert_close(fast(ids).logits, ref, atol=2e-5, rtol=1e-5)


def test_checkpoints_load_back_by_sharvet_and_by_plain_transformers(compressed, tmp_path):
    ids = tokens(2, 16, seed=4)
    folders = {family: checkpoint.save(model, tmp_path / family) for family, model in compressed.items()}
    tied = sharvet.load(folders["qwen2"])
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()  # stored once, tied again
    remote = remote_logits([str(f) for f in folders.values()], ids, tmp_path)
    with torch.no_grad():
        for i, (family, folder) in enumerate(folders.items()):
            ref = compressed[family](ids).logits
            torch.testing.assert_close(sharvet.load(folder)(ids).logits, ref)
            torch.testing.assert_close(remote[str(i)], ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_refinement_trains_and_loads_back_as_refined(family, tmp_path):
    teacher = _model(family)
    cfg = RefineConfig(output_dir=str(tmp_path / "run"), progress=False, lr=1e-2, cpu=True, batch_size=2, epochs=2,
                       mode=method(DEFAULT_METHOD).refine_mode, match_loss_scales=True)
    result = refine(_compressed(family), teacher, tokens(8, 16, seed=3), cfg)
    losses = [h["loss"] for h in result.history]  # the same batches in each epoch: compare epoch with epoch
    half = len(losses) // 2
    assert sum(losses[half:]) < sum(losses[:half])
    ids = tokens(2, 16, seed=4)
    with torch.no_grad():
        refined = result.model(ids).logits
        loaded = checkpoint.load(checkpoint.save(finalize(result.model, result.record()), tmp_path / "ck"))
        torch.testing.assert_close(loaded(ids).logits, refined, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prepare(loaded, fuse="best")(ids).logits, refined, atol=2e-5, rtol=1e-5)
