"""Calibration statistics: the fast accumulation equals a plain float64 reference; the GGUF load cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sharvet import calibration
from sharvet.calibration import InputStats, collect_stats
from sharvet.loading import gguf_parsed_once
from sharvet.models import adapter_for

from tiny import tiny_gpt2, tiny_llama, tokens


def empty_stats(d: int) -> InputStats:
    return InputStats(torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))


@pytest.mark.parametrize("width", [calibration.PANEL_WIDTH, 600, 7])
def test_update_matches_float64_reference_and_mirrors_panels(width):
    # 600 columns: three panels of 200; 7 columns: one panel
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 37, width, generator=g) + 0.5 for _ in range(3)]
    s = empty_stats(width)
    for x in batches:
        s.update(x)
    ref = torch.cat([x.reshape(-1, width) for x in batches]).double()
    torch.testing.assert_close(s.xtx, ref.T @ ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(s.total, ref.sum(0), rtol=1e-12, atol=1e-9)
    assert s.count == 3 * 2 * 37
    assert_mirrored(s.xtx)


def assert_mirrored(xtx: torch.Tensor) -> None:
    """Entries outside the diagonal panels are copies of one product; inside, one matmul's rounding."""
    d = len(xtx)
    block = torch.arange(d) // calibration.panels(d)[0][1]
    outside = block[:, None] != block[None, :]
    assert torch.equal(xtx[outside], xtx.T[outside])
    torch.testing.assert_close(xtx, xtx.T, rtol=1e-6, atol=0)


def test_half_precision_inputs_are_multiplied_in_float32():
    x = torch.randn(64, 300, dtype=torch.bfloat16)
    s = empty_stats(300)
    s.update(x)
    ref = x.double()
    torch.testing.assert_close(s.xtx, ref.T @ ref, rtol=1e-6, atol=1e-4)


def module_inputs(adapter, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Every (layer, input key) activation of a plain forward, as float64 token rows."""
    seen: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(adapter.num_layers)]
    handles = []
    for layer in range(adapter.num_layers):
        for key in adapter.input_keys():
            module = adapter.get_module(layer, adapter.first_module_for_input(key))
            store = seen[layer].setdefault(key, [])
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, store=store: store.append(args[0].detach().reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        adapter.base_model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return [{k: torch.cat(v).double() for k, v in per_key.items()} for per_key in seen]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_collected_stats_equal_float64_reference(make, monkeypatch):
    # narrow panels and sum chunks so the tiny widths (64, 128, 256) take every code path
    monkeypatch.setattr(calibration, "PANEL_WIDTH", 24)
    monkeypatch.setattr(calibration, "SUM_CHUNK", 20)
    model = make(3).train()
    adapter = adapter_for(model)
    ids = tokens(5, 16)
    stats = collect_stats(adapter, ids, batch_size=2, progress=False)
    assert model.training  # mode restored
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed
    reference = module_inputs(adapter.__class__(model.eval()), ids)
    assert stats.num_layers == 3
    for layer, per_key in enumerate(reference):
        assert set(stats.stats[layer]) == set(per_key)
        for key, x in per_key.items():
            s = stats.get(layer, key)
            assert s.count == 5 * 16
            assert s.xtx.dtype == s.total.dtype == torch.float64
            torch.testing.assert_close(s.xtx, x.T @ x, rtol=1e-6, atol=1e-5 * float(x.square().sum(1).max()))
            torch.testing.assert_close(s.total, x.sum(0), rtol=1e-12, atol=1e-10)
            torch.testing.assert_close(s.covariance(), torch.cov(x.T, correction=0), rtol=1e-5, atol=1e-6)
            assert_mirrored(s.xtx)
    # collected under inference_mode, but the statistics are ordinary tensors that can be updated later
    s = stats.get(0, adapter.input_keys()[0])
    assert not s.xtx.is_inference()
    s.update(torch.ones(1, s.xtx.shape[0]))


def write_gguf(path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_parsed_once_shares_the_parse_and_restores_gguf(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    plain = gguf.GGUFReader(str(path))
    with gguf_parsed_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is first
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        assert type(first.data) is np.ndarray and type(plain.data) is np.memmap  # read into memory
        assert list(first.fields) == list(plain.fields)
        assert np.array_equal(first.tensors[0].data, plain.tensors[0].data)
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    assert type(gguf.GGUFReader(str(path)).data) is np.memmap
    with pytest.raises(RuntimeError), gguf_parsed_once():
        raise RuntimeError("a failed load")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    assert type(gguf.GGUFReader(str(path)).data) is np.memmap
    assert gguf.GGUFReader(str(path)) is not gguf.GGUFReader(str(path))
