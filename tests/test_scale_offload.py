"""Streamed compression keeps the decoder layers on disk (accelerate's offload) and gives the same model."""
from __future__ import annotations

import torch

from sharvet import CompressionConfig, streaming
from sharvet.api import CalibrationSpec, compress_pretrained
from sharvet.models import adapter_for


def test_streamed_compress_keeps_layers_on_disk_and_matches_in_memory(model_dir, data_dir, monkeypatch, capsys):
    seen = {}
    collect = streaming.collect_streamed

    def spy(adapter, *args, **kwargs):
        seen["devices"] = {p.device.type for p in adapter.layers.parameters()}
        return collect(adapter, *args, **kwargs)

    monkeypatch.setattr(streaming, "collect_streamed", spy)
    models = {}
    for mode in ("on", "off"):
        spec = CalibrationSpec(samples=4, seq_len=32, data_dir=str(data_dir), cache_dir=None, stream=mode)
        models[mode], _, _ = compress_pretrained(str(model_dir), CompressionConfig(ratio=0.6, k=2), calibration=spec,
                                                 device="cpu", progress=False)
    assert seen["devices"] == {"meta"}  # the layers stayed on disk while calibrating
    on, off = models["on"], models["off"]
    assert not any(hasattr(m, "_hf_hook") for m in on.modules())  # a plain model again
    assert all(p.device.type == "cpu" for p in on.parameters())
    ref_state = off.state_dict()
    for name, t in on.state_dict().items():
        torch.testing.assert_close(t, ref_state[name], rtol=1e-5, atol=1e-6)
    ids = torch.randint(3, 18, (2, 16))
    torch.testing.assert_close(on(ids).logits, off(ids).logits, rtol=1e-4, atol=1e-5)


def test_offload_map_puts_each_decoder_layer_on_disk():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from tiny import tiny_llama

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(tiny_llama(3).config)
    m = streaming.offload_map(model, adapter_for(model).layers_path)
    assert m == {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk",
                 "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_checkpoint_load_builds_on_meta_and_reads_straight_into_the_dtype(tmp_path, monkeypatch):
    from sharvet import checkpoint, compress
    from sharvet.calibration import collect_stats

    from tiny import tiny_gpt2, tokens

    model = tiny_gpt2(4)  # tied embeddings and a shared basis
    ids = tokens(2, 16)
    stats = collect_stats(adapter_for(model), ids, batch_size=2, progress=False)
    compress(model, stats, CompressionConfig(ratio=0.6, k=2), progress=False)
    out = checkpoint.save(model, tmp_path / "ck")
    skeletons = []
    assign = checkpoint.assign_weights
    monkeypatch.setattr(checkpoint, "assign_weights", lambda m, *a: skeletons.append(
        {p.device.type for p in m.parameters()}) or assign(m, *a))
    loaded = checkpoint.load(out, dtype=torch.bfloat16)
    assert skeletons == [{"meta"}]  # nothing was initialised on the host
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    adapter = adapter_for(loaded)
    g = next(g for g in loaded.config.sharvet["groups"] if len(g["layers"]) > 1)
    assert len({id(adapter.get_module(layer, g["type"]).basis) for layer in g["layers"]}) == 1
    torch.testing.assert_close(loaded(ids).logits.float(), model.to(torch.bfloat16)(ids).logits.float())

