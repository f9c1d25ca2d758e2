"""Layer-streamed calibration: the same statistics as the in-memory pass, lazily read, resumable; the path choice."""
from __future__ import annotations

import copy

import pytest
import torch

from sharvet import CompressionConfig, calibration, compress, streaming
from sharvet.calibration import InputStats, collect_stats
from sharvet.models import adapter_for
from sharvet.streaming import StreamedStats, WontFitError, choose_stream, collect_streamed

from tiny import tiny_gpt2, tiny_llama, tokens


def assert_same_stats(streamed, reference, adapter) -> None:
    assert streamed.num_layers == reference.num_layers == adapter.num_layers
    for layer in range(adapter.num_layers):
        for key in adapter.input_keys():
            s, r = streamed.get(layer, key), reference.get(layer, key)
            assert s.count == r.count
            assert s.xtx.dtype == s.total.dtype == torch.float64
            torch.testing.assert_close(s.xtx, r.xtx, rtol=1e-6, atol=0)
            torch.testing.assert_close(s.total, r.total, rtol=1e-6, atol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # eager: a real mask, positional for GPT-2
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_streamed_stats_equal_in_memory_stats(make, attention, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "PANEL_WIDTH", 24)  # several stored panels per matrix
    model = make(3).train()
    model.set_attn_implementation(attention)
    adapter = adapter_for(model)
    ids = tokens(5, 16)
    streamed = collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert model.training  # mode restored
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"layer-0000{i}.safetensors" for i in range(3)]
    assert_same_stats(streamed, collect_stats(adapter, ids, batch_size=2, progress=False), adapter)


def test_stored_panels_rebuild_the_matrix_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "PANEL_WIDTH", 8)
    s = InputStats(torch.zeros(30, 30, dtype=torch.float64), torch.zeros(30, dtype=torch.float64))
    s.update(torch.randn(50, 30))
    streaming.save_layer(tmp_path, 0, streaming.layer_tensors({"k": s}))
    back = streaming.read_input(tmp_path, 0, "k")
    assert torch.equal(back.xtx, s.xtx) and torch.equal(back.total, s.total) and back.count == 50


def test_interrupted_run_resumes_from_the_last_finished_layer(tmp_path, monkeypatch):
    adapter = adapter_for(tiny_llama(4))
    ids = tokens(4, 16)
    written = []
    write = streaming.save_layer  # runs in the writer thread; what it raises reaches the caller

    def write_then_stop(folder, layer, tensors):
        if layer == 2:
            raise KeyboardInterrupt
        written.append(layer)
        write(folder, layer, tensors)

    monkeypatch.setattr(streaming, "save_layer", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert written == [0, 1] and streaming.finished_layers(tmp_path, 4) == 2
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("layer-*")}
    monkeypatch.setattr(streaming, "save_layer", lambda *a: (written.append(a[1]), write(*a)))
    resumed = collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert written == [0, 1, 2, 3]  # finished layers only ran forwards
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("layer-*") if p.name in before} == before
    assert not list(tmp_path.glob("*.tmp"))
    assert_same_stats(resumed, collect_stats(adapter, ids, batch_size=2, progress=False), adapter)
    collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert written == [0, 1, 2, 3]  # a finished folder is reused as it is


def test_lazy_stats_keep_at_most_their_cache_budget(tmp_path):
    adapter = adapter_for(tiny_llama(3))
    ids = tokens(2, 16)
    collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    one = 64 * 64 * 8  # a 64-wide X^T X
    stats = StreamedStats(tmp_path, 3, cache_bytes=2 * one)
    first = stats.get(0, "attn_in")
    assert stats.get(0, "attn_in") is first  # cached
    stats.get(1, "attn_in")
    stats.get(2, "attn_in")  # evicts layer 0, the least recently used
    assert len(stats._cache) == 2 and stats.get(0, "attn_in") is not first
    assert torch.equal(stats.get(0, "attn_in").xtx, first.xtx)


def test_models_compressed_from_streamed_and_in_memory_stats_agree(tmp_path):
    original = tiny_llama(4)
    adapter = adapter_for(original)
    calib, held_out = tokens(8, 32, seed=0), tokens(4, 32, seed=1)
    stats = {"memory": collect_stats(adapter, calib, batch_size=2, progress=False),
             "streamed": collect_streamed(adapter, calib, tmp_path, batch_size=2, device="cpu", progress=False),
             "other tokens": collect_stats(adapter, tokens(8, 32, seed=2), batch_size=2, progress=False)}
    logits, ppl = {}, {}
    for name, s in stats.items():
        model = copy.deepcopy(original)
        compress(model, s, CompressionConfig(ratio=0.6, k=2), progress=False)
        with torch.no_grad():
            out = model(held_out, labels=held_out)
        logits[name], ppl[name] = out.logits, float(torch.exp(out.loss))
    assert ppl["streamed"] == pytest.approx(ppl["memory"], rel=1e-3)
    torch.testing.assert_close(logits["streamed"], logits["memory"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits["other tokens"], logits["memory"], rtol=1e-3, atol=1e-3)  # stats matter


def test_auto_streams_only_what_would_not_fit(monkeypatch, capsys):
    adapter = adapter_for(tiny_llama(4))
    needs = streaming.memory_needs(adapter, 8, 32, 2, torch.device("cpu"))
    assert needs["streamed"] < needs["in_memory"]
    assert needs["in_memory"] >= 4 * streaming.stats_bytes(adapter)
    monkeypatch.setattr(streaming, "free_bytes", lambda _d: 10 * needs["in_memory"])
    assert not choose_stream("auto", adapter, 8, 32, 2, "cpu")
    assert "calibration in memory" in capsys.readouterr().err
    assert choose_stream("on", adapter, 8, 32, 2, "cpu")
    monkeypatch.setattr(streaming, "free_bytes", lambda _d: (needs["in_memory"] + needs["streamed"]) // 2)
    assert choose_stream("auto", adapter, 8, 32, 2, "cpu")
    assert "layer-streamed" in capsys.readouterr().err
    with pytest.raises(WontFitError, match="--stream on"):
        choose_stream("off", adapter, 8, 32, 2, "cpu")
    monkeypatch.setattr(streaming, "free_bytes", lambda _d: needs["streamed"] // 2)
    with pytest.raises(WontFitError, match="--calib-samples"):
        choose_stream("auto", adapter, 8, 32, 2, "cpu")
    with pytest.raises(ValueError, match="--stream must be"):
        choose_stream("sometimes", adapter, 8, 32, 2, "cpu")


@pytest.mark.slow
def test_smollm2_streamed_and_in_memory_agree(shared_data_dir, tmp_path):
    """The real model: statistics to 1e-6 relative, compressed perplexities to 0.1 %."""
    from sharvet.api import calibration_ids
    from sharvet.evaluation.perplexity import evaluation_tokens, perplexity
    from sharvet.loading import load_original
    from sharvet import CalibrationSpec, SimilarityConfig

    loaded = load_original(None)
    adapter = adapter_for(loaded.model)
    ids = calibration_ids(loaded, CalibrationSpec(samples=8, seq_len=256, data_dir=str(shared_data_dir)), seed=0)
    stats = {"memory": collect_stats(adapter, ids, batch_size=2, progress=False),
             "streamed": collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)}
    assert_same_stats(stats["streamed"], stats["memory"], adapter)
    held_out = evaluation_tokens("wikitext2", loaded.tokenizer, shared_data_dir)[:2048]
    ppl = {}
    for name, s in stats.items():
        model = copy.deepcopy(loaded.model)
        # CKA (the slow part on CPU) reads the same statistics; the tiny-model test above covers it
        compress(model, s, CompressionConfig(ratio=0.8, similarity=SimilarityConfig(use_cka=False)), progress=False)
        ppl[name] = perplexity(model, held_out, context=1024, progress=False).ppl
        del model
    print(f"SmolLM2-135M ratio 0.8, perplexity on 2048 WikiText-2 test tokens: {ppl}")
    assert ppl["streamed"] == pytest.approx(ppl["memory"], rel=1e-3)


def tiny_config_model(family: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128)
    cfg = AutoConfig.for_model(family, **{**sizes, **extra})
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family,extra", [("qwen2", {}), ("mistral", {"sliding_window": 8}),
                                          ("gemma", {"head_dim": 16}), ("olmo2", {}),
                                          ("granite", {"residual_multiplier": 0.5}), ("phi3", {"pad_token_id": 0}),
                                          ("smollm3", {"pad_token_id": 0, "no_rope_layers": [1, 0, 1]}),
                                          ("stablelm", {"pad_token_id": 0, "use_parallel_residual": True}),
                                          ("cohere", {"pad_token_id": 0})])
def test_streamed_stats_equal_in_memory_for_other_families(family, extra, tmp_path):
    """Qwen2's biases, Mistral's window, Gemma's offset norms, OLMo 2's post-norms, Granite's multipliers, Phi-3's
    fused projections, SmolLM3's layers without rotary embeddings, StableLM's and Cohere's parallel residuals."""
    adapter = adapter_for(tiny_config_model(family, **extra))
    ids = tokens(4, 24)  # longer than Mistral's window: the captured mask carries it to every layer
    streamed = collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert_same_stats(streamed, collect_stats(adapter, ids, batch_size=2, progress=False), adapter)


@pytest.mark.parametrize("family,extra", [
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}),
    ("gemma2", {"head_dim": 16, "sliding_window": 8}),
    ("gemma3_text", {"head_dim": 16, "sliding_window": 8, "num_hidden_layers": 4, "sliding_window_pattern": 2})])
def test_models_mixing_attention_kinds_stream_with_each_kinds_mask(family, extra, tmp_path):
    """Sliding-window and full-attention layers take their own masks (and Gemma 3 its own rotary tables): each kind's
    arguments come from the model's forward, so streamed statistics equal in-memory ones past the window."""
    adapter = adapter_for(tiny_config_model(family, **extra))
    kinds = adapter.layer_kinds()
    assert {"full_attention", "sliding_attention"} <= set(kinds)
    hidden, rest = adapter.first_layer_inputs(tokens(2, 24))
    assert set(rest) == set(kinds) and hidden.shape == (2, 24, 64)
    ids = tokens(4, 24)  # three windows long: a sliding layer's mask differs from a full one's
    streamed = collect_streamed(adapter, ids, tmp_path, batch_size=2, device="cpu", progress=False)
    assert_same_stats(streamed, collect_stats(adapter, ids, batch_size=2, progress=False), adapter)
    assert all("forward" not in layer.__dict__ for layer in adapter.layers)  # the catchers are gone


def test_cli_compress_streamed_equals_in_memory(model_dir, data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from sharvet.cli import main

    common = [str(model_dir), "--ratio", "0.6", "--k", "2", "--data-dir", str(data_dir), "--calib-samples", "4",
              "--calib-seq-len", "32", "--no-progress", "--seed", "0"]
    cache = tmp_path / "cache"
    assert main(["compress", *common, "-o", str(tmp_path / "on"), "--stream", "on", "--cache-dir", str(cache)]) == 0
    assert "calibration layer-streamed" in capsys.readouterr().err
    (folder,) = cache.iterdir()
    assert streaming.finished_layers(folder, 4) == 4  # kept for a rerun to reuse or resume
    assert main(["compress", *common, "-o", str(tmp_path / "off"), "--stream", "off", "--cache-dir", "none"]) == 0
    assert "calibration in memory" in capsys.readouterr().err
    on, off = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("on", "off"))
    assert on.keys() == off.keys()
    for name in on:
        torch.testing.assert_close(on[name], off[name], rtol=1e-5, atol=1e-6)
