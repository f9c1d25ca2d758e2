"""Similarity at scale: float32 pairs in batches over resident blocks of layers agree with the float64 definition;
split TF32 products (opt-in on CUDA, tensor-core rounding emulated) are as accurate and keep every grouping."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from sharvet import similarity
from sharvet.calibration import CalibrationStats, InputStats, collect_stats
from sharvet.grouping import GroupingRequest, make_groups
from sharvet.models import adapter_for
from sharvet.similarity import (SimilarityConfig, cka_from_covariance, cuda_matmul_precision, model_similarity, pooled_covariance,
                                split_tf32)

from tiny import tiny_llama, tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from scale_similarity import EmulatedTF32, to_tf32  # noqa: E402

TYPES = ["q", "k", "v", "o", "gate", "up", "down"]


def reference(adapter, stats, t):
    """The definitions, one pair at a time in float64: flattened-weight cosine and distance, pooled-covariance CKA."""
    n, key = adapter.num_layers, adapter.module_type(t).input_key
    w = [adapter.weight(layer, t).double() for layer in range(n)]
    cos, inv, cka = torch.eye(n, dtype=torch.float64), torch.full((n, n), math.inf, dtype=torch.float64), \
        torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            cos[i, j] = cos[j, i] = float((w[i] * w[j]).sum() / (w[i].norm() * w[j].norm()))
            inv[i, j] = inv[j, i] = 1.0 / (float((w[i] - w[j]).norm()) + 1e-8)
            cov = pooled_covariance(stats, key, i, j, "cpu", torch.float64)
            cka[i, j] = cka[j, i] = cka_from_covariance(w[i], w[j], cov)
    return cos, inv, cka


def llm_like_stats(adapter, seed=0) -> CalibrationStats:
    """Inputs with a few large-mean, heavy-tailed dimensions (LLMs' massive activations), per layer."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(adapter.num_layers):
        per_key = {}
        for key in adapter.input_keys():
            d = adapter.shape(adapter.first_module_for_input(key))[0]
            x = torch.randn(512, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g,
                                                                                    dtype=torch.float64) / d ** 0.5
            x[:, :3] = 300.0 + 50.0 * torch.randn(512, 3, generator=g, dtype=torch.float64)
            s = InputStats(torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))
            s.update(x)
            per_key[key] = s
        layers.append(per_key)
    return CalibrationStats(layers)


@pytest.mark.parametrize("budget", [None, 200_000])  # all resident at once / several blocks and batches
@pytest.mark.parametrize("which", ["model", "llm-like"])
def test_float32_batched_similarity_matches_float64_definition(which, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(similarity, "DEVICE_BUDGET", budget)
    adapter = adapter_for(tiny_llama(5))
    stats = collect_stats(adapter, tokens(4, 32), batch_size=2, progress=False) if which == "model" \
        else llm_like_stats(adapter)
    seen = []
    real_load = similarity.block_pairs

    def spy(n, layer_bytes, budget_, load):
        blocks = similarity.layer_blocks(n, layer_bytes, budget_)
        seen.append(len(blocks))
        return real_load(n, layer_bytes, budget_, load)

    monkeypatch.setattr(similarity, "block_pairs", spy)
    got = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False)
    got64 = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, precision=torch.float64)
    assert (max(seen) > 1) == (budget is not None)
    for t in TYPES:
        cos, inv, cka = reference(adapter, stats, t)
        torch.testing.assert_close(got64[t].functional, cka, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[t].functional, cka, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[t].cosine, cos, rtol=0, atol=1e-6)
        torch.testing.assert_close(got[t].inv_distance, inv, rtol=1e-5, atol=0)
        assert got[t].joint.dtype == torch.float64 and got[t].joint.device.type == "cpu"


def test_cpu_batches_of_cka_pairs_stay_small(monkeypatch):
    """On a CPU a batch of pairs takes at most ``CPU_PAIR_BATCH`` whatever the budget (bigger ones were slower)."""
    adapter = adapter_for(tiny_llama(5))
    stats = collect_stats(adapter, tokens(4, 32), batch_size=2, progress=False)
    seen, real = [], similarity.batches
    monkeypatch.setattr(similarity, "batches", lambda pairs, pair_bytes, budget: seen.append(budget)
                        or real(pairs, pair_bytes, budget))
    similarity.functional_similarities(adapter, ["q"], stats, "attn_in", torch.device("cpu"), torch.float32,
                                       budget=8 * 2**30, progress=False)
    assert seen and max(seen) == similarity.CPU_PAIR_BATCH


def test_blocks_cover_every_pair_once_with_at_most_two_resident():
    loads, resident_max, pairs = [], 0, []
    for chunk, resident in similarity.block_pairs(10, 100, 1300, lambda layer: loads.append(layer) or {}):
        resident_max = max(resident_max, len(resident))
        pairs += chunk
    assert sorted(pairs) == [(i, j) for i in range(10) for j in range(i + 1, 10)]
    assert resident_max <= 2 * 3  # blocks of 1300 // 400 = 3 layers
    assert len(loads) < 10 * 4  # each layer loaded about blocks / 2 + 1 times, not once per pair



def test_to_tf32_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 3 * 2**-11, -(1.0 + 2**-11 + 2**-20), 1.0 + 2**-12])
    assert to_tf32(x).tolist() == [1.0 + 2**-10, 1.0, 1.0 + 2**-9, -(1.0 + 2**-10), 1.0]  # ties to even
    assert to_tf32(x, "truncate").tolist() == [1.0 + 2**-10, 1.0, 1.0 + 2**-10, -1.0, 1.0]
    r = torch.randn(1000) * 1e3
    assert ((to_tf32(r) - r).abs() <= r.abs() * 2**-11).all() and (to_tf32(to_tf32(r)) == to_tf32(r)).all()


def test_split_tf32_parts_are_exact_and_bf16_has_no_low_part():
    x = torch.randn(64, 32) * torch.logspace(-3, 3, 32)
    hi, lo = split_tf32(x.T)  # a transposed view, as the products pass weights
    assert torch.equal(hi + lo, x.T) and torch.equal(to_tf32(hi, "truncate"), hi) and torch.equal(to_tf32(hi), hi)
    assert (lo.abs() < hi.abs() * 2**-10).all()
    assert split_tf32(x.bfloat16().float())[1] is None


# tensor cores round inputs to nearest or towards zero
@pytest.mark.parametrize("which,rounding", [("llm-like", "nearest"), ("llm-like", "truncate"), ("model", "nearest")])
def test_split_tf32_products_are_float32_accurate_where_plain_tf32_is_not(which, rounding):
    """Under TF32 rounding (emulated: every matmul input rounded to 10 mantissa bits) split products keep CKA as
    close to float64 as float32 products are (the float32 test's tolerance) and every grouping, also with
    massive-activation inputs; plain TF32 products move CKA ~100x further (SmolLM2: 5.4e-4 and other groups,
    docs/similarity_cost.md). Cosine and distance take no matmul."""
    adapter = adapter_for(tiny_llama(5))  # float32 weights: their low parts are multiplied too
    stats = collect_stats(adapter, tokens(4, 32), batch_size=2, progress=False) if which == "model" \
        else llm_like_stats(adapter)
    ref = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, precision=torch.float64)
    with EmulatedTF32(rounding):
        split = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, cka_matmul="split-tf32")
        plain = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, cka_matmul="ieee")
    n = adapter.num_layers
    assert max(float((plain[t].functional - ref[t].functional).abs().max()) for t in TYPES) > 1e-5
    for t in TYPES:
        torch.testing.assert_close(split[t].functional, ref[t].functional, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(split[t].cosine, ref[t].cosine, rtol=0, atol=1e-6)
        for k in range(1, n + 1):
            assert make_groups("spectral", GroupingRequest(n, k, split[t].joint, 0)) == \
                make_groups("spectral", GroupingRequest(n, k, ref[t].joint, 0))


def test_cuda_matmul_precision_is_set_only_inside_and_restored_on_errors():
    flags = torch.backends.cuda.matmul
    before = flags.fp32_precision
    with cuda_matmul_precision(torch.device("cpu"), "tf32"):
        assert flags.fp32_precision == before  # off CUDA nothing changes
    for mode in ("tf32", "ieee"):
        with cuda_matmul_precision(torch.device("cuda"), mode):
            assert flags.fp32_precision == mode
        assert flags.fp32_precision == before
    with pytest.raises(RuntimeError, match="inside"), cuda_matmul_precision(torch.device("cuda"), "tf32"):
        raise RuntimeError("inside")
    assert flags.fp32_precision == before
    with pytest.raises(ValueError, match="tf32"), cuda_matmul_precision(torch.device("cuda"), "bf16"):
        pass


def test_cuda_matmul_precision_uses_the_legacy_flag_on_older_torch(monkeypatch):
    class Legacy:  # torch < 2.9: only allow_tf32
        allow_tf32 = False

    monkeypatch.setattr(torch.backends.cuda, "matmul", Legacy())
    with cuda_matmul_precision(torch.device("cuda"), "tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_cpu_similarity_multiplies_in_float32_and_leaves_the_cuda_flag_alone(monkeypatch):
    seen, real = [], similarity._cka_terms
    monkeypatch.setattr(similarity, "_cka_terms", lambda *a: seen.append(
        (a[-1], torch.backends.cuda.matmul.fp32_precision)) or real(*a))
    before = torch.backends.cuda.matmul.fp32_precision
    adapter = adapter_for(tiny_llama(3))
    model_similarity(adapter, ["q", "down"], llm_like_stats(adapter), SimilarityConfig(), progress=False)
    assert seen and set(seen) == {(torch.matmul, before)}
    with pytest.raises(ValueError, match="cka_matmul"):
        model_similarity(adapter, ["q"], llm_like_stats(adapter), SimilarityConfig(), progress=False,
                         cka_matmul="tf32")


def test_the_similarity_config_chooses_split_products(monkeypatch):
    """``SimilarityConfig.cka_matmul`` (``sharvet compress --cka-matmul``) reaches the CKA products."""
    seen, real = [], similarity._cka_terms
    monkeypatch.setattr(similarity, "_cka_terms", lambda *a: seen.append(a[-1]) or real(*a))
    adapter = adapter_for(tiny_llama(3))
    model_similarity(adapter, ["q"], llm_like_stats(adapter), SimilarityConfig(cka_matmul="split-tf32"),
                     progress=False)
    assert seen and set(seen) == {similarity.split_matmul}
    with pytest.raises(ValueError, match="cka_matmul"):
        SimilarityConfig(cka_matmul="tf32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 tensor cores need CUDA")
def test_cuda_split_tf32_similarity_matches_float64():
    adapter = adapter_for(tiny_llama(5))
    stats = llm_like_stats(adapter)
    before = torch.backends.cuda.matmul.fp32_precision
    ref = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, precision=torch.float64)
    got = model_similarity(adapter, TYPES, stats, SimilarityConfig(), progress=False, device="cuda",
                           cka_matmul="split-tf32")
    assert torch.backends.cuda.matmul.fp32_precision == before
    for t in TYPES:
        torch.testing.assert_close(got[t].functional, ref[t].functional, rtol=1e-5, atol=1e-6)
