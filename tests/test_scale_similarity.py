"""Similarity at scale: float32 pairs in batches over resident blocks of layers agree with the float64 definition."""
from __future__ import annotations

import math

import pytest
import torch

from sharvet import similarity
from sharvet.calibration import CalibrationStats, InputStats, collect_stats
from sharvet.models import adapter_for
from sharvet.similarity import SimilarityConfig, cka_from_covariance, model_similarity, pooled_covariance

from tiny import tiny_llama, tokens

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


def test_blocks_cover_every_pair_once_with_at_most_two_resident():
    loads, resident_max, pairs = [], 0, []
    for chunk, resident in similarity.block_pairs(10, 100, 1300, lambda layer: loads.append(layer) or {}):
        resident_max = max(resident_max, len(resident))
        pairs += chunk
    assert sorted(pairs) == [(i, j) for i in range(10) for j in range(i + 1, 10)]
    assert resident_max <= 2 * 3  # blocks of 1300 // 400 = 3 layers
    assert len(loads) < 10 * 4  # each layer loaded about blocks / 2 + 1 times, not once per pair
