"""Weight-only RTN quantisation: the quantiser, its packed storage, exact byte counts, and quantised models."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from sharvet import CompressionConfig, collect_stats, compress
from sharvet.accounting import unique_parameters
from sharvet.models import adapter_for
from sharvet.modules import SharedBasisLinear
from sharvet.quantization import (QuantizedLinear, QuantizedSharedBasisLinear, QuantizedTensor, pack_codes,
                                  quantize_model, rtn_codes, storage_report, unpack_codes)
from tiny import tiny_gpt2, tiny_llama, tokens

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def per_column(t: torch.Tensor, group_size: int, cols: int) -> torch.Tensor:
    return t.float().repeat_interleave(group_size, dim=1)[:, :cols]


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("cols", [256, 200, 77])
def test_rtn_error_is_at_most_half_a_step(bits, cols):
    g = torch.Generator().manual_seed(bits + cols)
    w = torch.randn(48, cols, generator=g) * torch.rand(48, 1, generator=g) * 3
    w[0, :10] = 0.0
    q = QuantizedTensor(w, bits, 128)
    codes = q.codes()
    assert codes.max() <= 2**bits - 1
    step = per_column(q.scale, 128, cols)
    assert ((q.dequantize() - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(q.dequantize()[0, :10], torch.zeros(10))  # zero is a code: exact
    assert torch.equal(q.dequantize(), q.dense)  # the forward reads exactly what is stored


def test_a_short_last_group_has_its_own_range():
    """d_in = 200 with groups of 128: the last 72 columns are quantised as if they were alone (no padding)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 200, generator=g)
    w[:, 128:] *= 0.01  # a much smaller range than the first group's
    codes, scale, zero = rtn_codes(w, 4, 128)
    assert scale.shape == zero.shape == (16, 2)
    tail_codes, tail_scale, tail_zero = rtn_codes(w[:, 128:], 4, 128)
    assert torch.equal(codes[:, 128:], tail_codes)
    assert torch.equal(scale[:, 1:], tail_scale) and torch.equal(zero[:, 1:], tail_zero)
    head_codes, head_scale, _ = rtn_codes(w[:, :128], 4, 128)
    assert torch.equal(codes[:, :128], head_codes) and torch.equal(scale[:, :1], head_scale)
    assert (scale[:, 1].float() < 0.05 * scale[:, 0].float()).all()


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_round_trip_and_exact_size(bits):
    codes = torch.randint(0, 2**bits, (7, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(7 * 13 * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).view(7, 13), codes)


def test_four_bit_packs_two_codes_per_byte_low_nibble_first():
    packed = pack_codes(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8), 4)
    assert packed.tolist() == [0x21, 0x0F]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bits"):
        rtn_codes(torch.randn(2, 8), 1, 4)
    with pytest.raises(ValueError, match="group_size"):
        rtn_codes(torch.randn(2, 8), 4, 0)


def expected_bytes(model: nn.Module, bits: int, group_size: int) -> int:
    """Bytes by hand: each decoder linear weight packed + 4 B per group, every other number (biases too) 2 B."""
    adapter = adapter_for(model)
    weights = [adapter.get_module(l, t).weight for l in range(adapter.num_layers) for t in adapter.type_names]
    quantized = sum(math.ceil(w.numel() * bits / 8) + 4 * _rows_groups(adapter, w, group_size) for w in weights)
    floats = sum(p.numel() for p in unique_parameters(model)) - sum(w.numel() for w in weights)
    return quantized + 2 * floats


def _rows_groups(adapter, w, group_size):
    d_out, d_in = (w.shape[1], w.shape[0]) if adapter.family == "gpt2" else w.shape
    return d_out * math.ceil(d_in / group_size)


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 128), (3, 48)])
def test_dense_byte_count_is_exact(family, bits, group_size):
    model = MODELS[family]()
    expected = expected_bytes(model, bits, group_size)
    report = quantize_model(model, bits, group_size)
    assert report.total_bytes == expected
    tensors = {id(m): m for m in model.modules() if isinstance(m, QuantizedTensor)}.values()
    assert sum(t.packed.numel() + 2 * (t.scale.numel() + t.zero.numel()) for t in tensors) == report.quantized_bytes
    assert storage_report(model).total_bytes == expected  # counted again from the model alone


def test_unquantised_bytes_count_tied_embeddings_once():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert storage_report(model).total_bytes == 2 * sum(p.numel() for p in unique_parameters(model))


@pytest.mark.parametrize("family", MODELS)
def test_dense_forward_is_the_dequantised_model(family):
    model = MODELS[family]()
    ids = tokens()
    reference = copy.deepcopy(model)
    adapter = adapter_for(reference)
    for l in range(adapter.num_layers):
        for t in adapter.type_names:
            module = adapter.get_module(l, t)
            w = adapter.weight(l, t)
            deq = QuantizedTensor(w, 4, 32).dequantize()
            module.weight.data.copy_(deq if family == "llama" else deq.T)
    quantize_model(model, 4, 32)
    assert isinstance(adapter_for(model).get_module(0, adapter.type_names[0]), QuantizedLinear)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def compressed(family: str, ratio: float = 0.75):
    model = MODELS[family]()
    ids = tokens()
    compress(model, collect_stats(adapter_for(model), ids, progress=False), CompressionConfig(ratio=ratio, k=2),
             progress=False)
    return model, ids


@pytest.mark.parametrize("family", MODELS)
def test_shared_basis_forward_equals_dequantised_factors(family):
    model, ids = compressed(family)
    adapter = adapter_for(model)
    before = {(l, t): adapter.get_module(l, t) for l in range(adapter.num_layers) for t in adapter.type_names}
    quantize_model(model, 4)
    for (l, t), old in before.items():
        new = adapter.get_module(l, t)
        assert isinstance(old, SharedBasisLinear) and isinstance(new, QuantizedSharedBasisLinear)
        x = torch.randn(3, 5, new.in_features)
        h = (x * new.scale) @ new.basis.dequantize().T @ new.v.dequantize().T
        if new.bias is not None:
            h = h + new.bias
        torch.testing.assert_close(new(x), h, atol=1e-4, rtol=1e-5)
        assert torch.equal(new.scale, old.scale)  # lambda stays as it was, in floating point


def factor_errors(bits: int, rescale: bool) -> list[float]:
    """Relative error of each quantised layer's ``V_q U_q diag(lambda)`` against its weight (sigma absorbed)."""
    model, _ = compressed("llama")
    adapter = adapter_for(model)
    slots = [(l, t) for l in range(adapter.num_layers) for t in adapter.type_names]
    weights = [adapter.get_module(l, t).weight.detach().clone() for l, t in slots]
    quantize_model(model, bits, rescale=rescale)
    errors = []
    for (l, t), w in zip(slots, weights):
        m = adapter.get_module(l, t)
        errors.append(float((m.v.dequantize() @ m.basis.dequantize() * m.scale - w).norm() / w.norm()))
    return errors


def test_factor_rescaling_is_exact_and_helps():
    """At 8 bits the rescaled factors reproduce every weight to 1 %: the factor moved from U to V cancels; with
    U's rows left as they are, their small float16 scales lose more."""
    rescaled, plain = factor_errors(8, True), factor_errors(8, False)
    assert max(rescaled) < 0.01
    assert sum(rescaled) < sum(plain)


@pytest.mark.parametrize("family", MODELS)
def test_a_shared_basis_is_quantised_and_counted_once(family):
    model, _ = compressed(family)
    adapter = adapter_for(model)
    slots = [adapter.get_module(l, t) for l in range(adapter.num_layers) for t in adapter.type_names]
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(slots):
        groups.setdefault(id(m.basis), []).append(i)
    assert any(len(members) > 1 for members in groups.values())
    report = quantize_model(model, 4)
    quantized = [adapter.get_module(l, t) for l in range(adapter.num_layers) for t in adapter.type_names]
    for members in groups.values():
        assert len({id(quantized[i].basis) for i in members}) == 1  # one object for the whole group
    assert report.quantized_tensors == len(groups) + len(slots)  # bases once, V per layer
    bases = {id(m.basis): m.basis for m in quantized}.values()
    expected = sum(t.nbytes for t in bases) + sum(m.v.nbytes for m in quantized)
    assert report.quantized_bytes == expected


def test_quantised_model_stays_close_to_the_compressed_one():
    model, ids = compressed("llama")
    reference = model(ids).logits
    four, three = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(four, 4)
    quantize_model(three, 3)
    err4 = (four(ids).logits - reference).norm() / reference.norm()
    err3 = (three(ids).logits - reference).norm() / reference.norm()
    assert err4 < 0.2 and err4 < err3


def test_eval_quantize_records_the_bytes(model_dir, data_dir, tmp_path, capsys):
    from sharvet.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(model_dir), "--quantize", "3", "--ppl", "wikitext2", "--context", "32", "--data-dir",
                 str(data_dir), "--json", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert "RTN 3-bit, group 128" in capsys.readouterr().out
    result = json.loads(out.read_text())
    from transformers import AutoModelForCausalLM

    expected = expected_bytes(AutoModelForCausalLM.from_pretrained(model_dir), 3, 128)
    assert result["quantization"]["total_bytes"] == expected and result["quantization"]["bits"] == 3
    assert result["perplexity"]["wikitext2"]["status"] == "ok" and "RTN 3-bit" in result["model"]


def test_eval_quantize_rejects_bad_bits(capsys):
    from sharvet.cli import main

    assert main(["eval", "--quantize", "1"]) == 2
    assert "--quantize invalid choice: 1" in capsys.readouterr().err

