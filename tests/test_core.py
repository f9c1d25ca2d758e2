"""Core pipeline on tiny random LLaMA and GPT-2 models."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from sharvet import checkpoint
from sharvet.allocation import LayerLayout, allocate_ranks, spectrum_ranks
from sharvet.decomposition import decompose_group, group_energies
from sharvet.calibration import CalibrationStats, collect_or_load, collect_stats
from sharvet.grouping import STRATEGIES, GroupingRequest, make_groups
from sharvet.models import UnsupportedModelError, adapter_for
from sharvet.modules import SharedBasisLinear
from sharvet.config import CompressionConfig
from sharvet.kinds import kind
from sharvet.pipeline import compress
from sharvet.similarity import SimilarityConfig, cka_from_covariance

from tiny import tiny_gpt2, tiny_llama, tokens

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def compressed(family: str, **cfg):
    model = MODELS[family]()
    ids = tokens()
    ref = model(ids).logits
    stats = collect_stats(adapter_for(model), ids, progress=False)
    result = compress(model, stats, CompressionConfig(**cfg), progress=False)
    return model, ids, ref, result


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("decomposition", ["plain", "whitened"])
def test_full_rank_reproduces_logits(family, decomposition):
    model = MODELS[family]()
    ids = tokens()
    ref = model(ids).logits
    adapter = adapter_for(model)
    stats = collect_stats(adapter, ids, progress=False)
    from sharvet.install import install_group
    from sharvet.planning import plan_compression

    cfg = CompressionConfig(ratio=0.5, k=2, decomposition=decomposition)
    plan, _ = plan_compression(adapter, stats, cfg, progress=False)
    for g in plan.groups:  # raise every group to full rank
        d_in, d_out = adapter.shape(g.type)
        g.rank = min(d_in, len(g.layers) * d_out)
        install_group(adapter, g, plan.layout, kind(g.kind).factors(adapter, g, stats, decomposition == "whitened", "cpu"))
    assert isinstance(adapter.get_module(0, adapter.type_names[0]), SharedBasisLinear)
    torch.testing.assert_close(model(ids).logits, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("grouping", sorted(STRATEGIES))
@pytest.mark.parametrize("allocation", ["adaptive", "uniform", "spectrum"])
def test_budget_holds_for_every_strategy(family, grouping, allocation):
    model, _, _, result = compressed(family, ratio=0.6, k=3, grouping=grouping, allocation=allocation)
    adapter = adapter_for(model)
    for t in adapter.type_names:
        d_in, d_out = adapter.shape(t)
        bias = adapter.bias(0, t) is not None
        original = adapter.num_layers * (d_in * d_out + (d_out if bias else 0))
        layout = dataclasses.replace(result.plan.layout, bias=bias)
        used = sum(layout.group_cost(g.rank, len(g.layers), d_in, d_out) for g in result.plan.groups_of(t))
        step = max(layout.group_step(len(g.layers), d_in, d_out) for g in result.plan.groups_of(t))
        assert used <= 0.6 * original
        assert used > 0.6 * original - step  # nothing left that another rank could use
    report = result.report
    assert report.linear_ratio <= 0.6
    assert report.linear_ratio >= 0.6 * 0.98  # tiny layers: one rank step is ~1% here


def test_budget_within_half_percent_at_real_scale():
    """SmolLM2 shapes: 30 layers, q 576x576, gate 576x1536, k 576x192."""
    layout = LayerLayout()
    groups = [list(range(i, min(i + 3, 30))) for i in range(0, 30, 3)]
    sim = torch.rand(30, 30, generator=torch.Generator().manual_seed(0))
    sim = (sim + sim.T) / 2
    for d_in, d_out in [(576, 576), (576, 1536), (576, 192), (1536, 576)]:
        for ratio in (0.8, 0.7, 0.5, 0.3):
            ranks = allocate_ranks(groups, ratio, d_in, d_out, layout, adaptive=True, similarity=sim)
            used = sum(layout.group_cost(r, len(g), d_in, d_out) for r, g in zip(ranks, groups))
            budget = ratio * 30 * d_in * d_out
            assert 0.995 * budget <= used <= budget


def test_spectrum_allocation_follows_the_energy_within_the_budget():
    groups, layout = [[0, 1], [2, 3], [4]], LayerLayout()
    flat = torch.full((64,), 1.0)
    steep = torch.cat([torch.full((32,), 100.0), torch.full((32,), 1e-3)])
    energies = [flat, steep, flat.clone()]
    ranks = spectrum_ranks(groups, 0.5, 64, 64, layout, energies, mu=0.2)
    used = sum(layout.group_cost(r, len(g), 64, 64) for r, g in zip(ranks, groups))
    assert used <= 0.5 * 5 * 64 * 64 < used + max(layout.group_step(len(g), 64, 64) for g in groups)
    assert ranks[1] >= 32  # the steep group keeps its whole head before flat groups get more
    floors = spectrum_ranks(groups, 0.5, 64, 64, layout, [torch.zeros(64)] * 3, mu=1.0)  # mu = 1: uniform
    uniform = allocate_ranks(groups, 0.5, 64, 64, layout, adaptive=False)
    assert all(abs(f - u) <= 1 for f, u in zip(floors, uniform))
    with pytest.raises(ValueError, match="spectra"):
        spectrum_ranks(groups, 0.5, 64, 64, layout, energies[:2])


@pytest.mark.parametrize("whitened", [False, True])
def test_group_energies_are_the_truncation_error_per_pooled_input(whitened):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(12, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    xtx = x.T @ x if whitened else None
    energies = group_energies(weights, None if xtx is None else 3 * xtx)  # three layers with the same inputs
    f = decompose_group(weights, 5, xtx=None if xtx is None else 3 * xtx)
    error = 0.0
    for w, v in zip(weights, f.v):
        delta = w - (v * f.sigma) @ f.basis
        error += float(((x @ delta.T) ** 2).sum() if whitened else (delta ** 2).sum())
    expected = error if whitened else error / 3  # whitened: 3 pooled copies of x, divided by Z = 3
    assert float(energies[5:].sum()) == pytest.approx(expected, rel=1e-8)
    assert torch.all(energies[:-1] >= energies[1:])


def test_adaptive_gives_dissimilar_groups_more_rank():
    sim = torch.ones(6, 6)
    sim[3:, 3:] = 0.2
    sim.fill_diagonal_(1.0)
    ranks = allocate_ranks([[0, 1, 2], [3, 4, 5]], 0.5, 64, 64, LayerLayout(), adaptive=True, mu=0.5,
                           similarity=sim)
    assert ranks[1] > ranks[0]
    uniform = allocate_ranks([[0, 1, 2], [3, 4, 5]], 0.5, 64, 64, LayerLayout(), adaptive=False)
    assert abs(uniform[0] - uniform[1]) <= 1  # the flooring remainder goes to one group


@pytest.mark.parametrize("tokens", [1, 3, 200])
def test_shared_basis_forward_scales_either_side_alike(tokens):
    """Few tokens scale the activations, many scale the weights: the same output and gradients either way."""
    g = torch.Generator().manual_seed(0)
    basis = torch.nn.Parameter(torch.randn(8, 16, generator=g))
    m = SharedBasisLinear(basis, torch.randn(12, 8, generator=g), sigma=torch.rand(8, generator=g) + 0.5,
                          scale=torch.rand(16, generator=g) + 0.5, bias=torch.randn(12, generator=g))
    for p in (m.scale, m.sigma, m.v):
        p.requires_grad_(True)
    x = torch.randn(tokens, 16, generator=g, dtype=torch.float64)
    m.double()
    y = m(x)
    reference = F.linear(F.linear(x * m.scale, m.basis) * m.sigma, m.v, m.bias)
    assert torch.allclose(y, reference, atol=1e-12)
    grads = torch.autograd.grad(y.square().sum(), (m.scale, m.sigma, m.v))
    expected = torch.autograd.grad(reference.square().sum(), (m.scale, m.sigma, m.v))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


@pytest.mark.parametrize("family", MODELS)
def test_shared_basis_is_one_storage_and_saved_once(family, tmp_path):
    model, ids, _, result = compressed(family, ratio=0.6, k=2)
    adapter = adapter_for(model)
    shared_groups = [g for g in result.plan.groups if len(g.layers) > 1]
    assert shared_groups
    for g in shared_groups:
        mods = [adapter.get_module(layer, g.type) for layer in g.layers]
        assert all(m.basis is mods[0].basis for m in mods)
    # the basis is one Parameter: an optimizer would see it once
    names = [n for n, _ in model.named_parameters() if n.endswith(".basis")]
    assert len(names) == sum(1 for _ in result.plan.groups)
    out = checkpoint.save(model, tmp_path / "ck")
    with safe_open(str(out / checkpoint.WEIGHTS), "pt") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    total_unique = sum(p.numel() for p in model.parameters())  # parameters() yields each storage once
    assert stored == total_unique
    size = (out / checkpoint.WEIGHTS).stat().st_size
    duplicated = sum(adapter.get_module(l, g.type).basis.numel() for g in shared_groups for l in g.layers[1:])
    assert size < 4 * (total_unique + duplicated)  # float32: duplicated bases would not fit
    assert size >= 4 * total_unique


@pytest.mark.parametrize("family", MODELS)
def test_save_load_bit_identical(family, tmp_path):
    model, ids, _, _ = compressed(family, ratio=0.7, k=3)
    out = checkpoint.save(model, tmp_path / "ck", summary="x")
    loaded = checkpoint.load(out)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    adapter = adapter_for(loaded)
    g = next(g for g in loaded.config.sharvet["groups"] if len(g["layers"]) > 1)
    mods = [adapter.get_module(layer, g["type"]) for layer in g["layers"]]
    assert all(m.basis is mods[0].basis for m in mods)
    assert not any(p.name.startswith(".ck.partial") for p in tmp_path.iterdir())


def test_compression_reduces_error_with_rank():
    errs = []
    for ratio in (0.3, 0.6, 0.9):
        model, ids, ref, _ = compressed("llama", ratio=ratio, k=3)
        errs.append(float((model(ids).logits - ref).norm() / ref.norm()))
    assert errs[0] > errs[1] > errs[2]


def test_cka_from_covariance_equals_activation_cka():
    g = torch.Generator().manual_seed(0)
    x_i, x_j = torch.randn(300, 16, generator=g, dtype=torch.float64), torch.randn(200, 16, generator=g,
                                                                                      dtype=torch.float64) + 0.5
    w_i, w_j = torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(24, 16, generator=g,
                                                                                   dtype=torch.float64)
    # balanced pooling: weight each layer's tokens equally, as the pooled covariance does
    x = torch.cat([x_i.repeat(2, 1), x_j.repeat(3, 1)])
    xc = x - x.mean(0)

    def cka(a, b):
        return float((b.T @ a).square().sum() / ((a.T @ a).norm() * (b.T @ b).norm()))

    expected = cka(xc @ w_i.T, xc @ w_j.T)
    stats = CalibrationStats([
        {"in": _stats(x_i)}, {"in": _stats(x_j)},
    ])
    from sharvet.similarity import pooled_covariance

    cov = pooled_covariance(stats, "in", 0, 1, "cpu", torch.float64)
    assert cka_from_covariance(w_i, w_j, cov) == pytest.approx(expected, rel=1e-9)
    assert cka_from_covariance(w_j, w_i, cov) == pytest.approx(expected, rel=1e-9)  # wide branch


def _stats(x):
    from sharvet.calibration import InputStats

    s = InputStats(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64))
    s.update(x)
    return s


def test_calibration_stats_match_explicit_inputs_and_cache(tmp_path):
    model = tiny_llama(2)
    adapter = adapter_for(model)
    ids = tokens(4, 16)
    seen = []
    h = adapter.get_module(1, "down").register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    stats = collect_stats(adapter, ids, batch_size=3, progress=False)
    h.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    torch.testing.assert_close(stats.get(1, "down_in").xtx, x.T @ x, rtol=1e-5, atol=1e-5)
    assert stats.get(1, "down_in").count == 64
    assert set(stats.stats[0]) == {"attn_in", "o_in", "mlp_in", "down_in"}
    a = collect_or_load(adapter, ids, model_id="tiny", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    b = collect_or_load(adapter, ids, model_id="tiny", cache_dir=tmp_path, progress=False)
    assert torch.equal(a.get(1, "o_in").xtx, b.get(1, "o_in").xtx)


def test_similarity_switches_and_spectral_groups_similar_layers():
    from sharvet.similarity import joint_similarity, structural_similarity

    cos = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    inv = torch.tensor([[float("inf"), 2.0], [2.0, float("inf")]])
    only_cos = structural_similarity(cos, inv, SimilarityConfig(use_frobenius=False))
    assert only_cos[0, 1] == pytest.approx(1 - torch.exp(torch.tensor(-1.9)).item())
    assert structural_similarity(cos, inv, SimilarityConfig(use_cosine=False, use_frobenius=False)) is None
    j = joint_similarity(None, torch.tensor([[1.0, 0.3], [0.3, 1.0]]))
    assert j[0, 1] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        SimilarityConfig(use_cosine=False, use_frobenius=False, use_cka=False)
    block = torch.full((6, 6), 0.05)
    block[:3, :3] = block[3:, 3:] = 0.95
    groups = make_groups("spectral", GroupingRequest(6, 2, block, 0))
    assert groups == [[0, 1, 2], [3, 4, 5]]


def test_balanced_spectral_keeps_balanced_clusters_and_splits_unbalanced_ones():
    """Clusters that are already of equal size come back as spectral finds them; a big cluster beside
    outliers is split so that every group has floor(L / k) or one more layers."""
    block = torch.full((6, 6), 0.05)
    block[:3, :3] = block[3:, 3:] = 0.95
    assert make_groups("spectral-balanced", GroupingRequest(6, 2, block, 0)) == [[0, 1, 2], [3, 4, 5]]
    skewed = torch.full((8, 8), 0.05)
    skewed[:6, :6] = 0.95  # six similar layers and two outliers
    skewed.fill_diagonal_(1.0)
    free = make_groups("spectral", GroupingRequest(8, 4, skewed, 0))
    balanced = make_groups("spectral-balanced", GroupingRequest(8, 4, skewed, 0))
    assert max(map(len, free)) > 2  # free sizes: the six stay (mostly) together
    assert sorted(map(len, balanced)) == [2, 2, 2, 2]
    assert sorted(map(len, make_groups("spectral-balanced", GroupingRequest(8, 3, skewed, 0)))) == [2, 3, 3]


def test_cycle_layer_to_set_maps():
    assert make_groups("cycle", GroupingRequest(6, 3)) == [[0, 3], [1, 4], [2, 5]]
    assert make_groups("cycle-rev", GroupingRequest(6, 3)) == [[0, 5], [1, 4], [2, 3]]
    assert make_groups("consecutive", GroupingRequest(6, 3)) == [[0, 1], [2, 3], [4, 5]]


def test_unsupported_architecture_names_supported_ones():
    from transformers import BertConfig, BertModel

    with pytest.raises(UnsupportedModelError, match="llama.*"):
        adapter_for(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32)))


def test_gqa_shapes_and_gpt2_fused_type():
    assert adapter_for(tiny_llama()).shapes()["k"] == (64, 32)
    a = adapter_for(tiny_gpt2())
    assert a.type_names == ["qkv", "o", "up", "down"]
    assert a.shapes()["qkv"] == (64, 192)


def test_compression_records_the_seconds_of_each_stage():
    """Where a long compression's time went travels with the plan (and so with the checkpoint)."""
    model = tiny_llama()
    stats = collect_stats(adapter_for(model), tokens(), progress=False)
    result = compress(model, stats, CompressionConfig(ratio=0.5, k=2), progress=False)
    stages = result.plan.settings.stage_seconds
    assert set(stages) == {"planning", "decomposition"} and all(s >= 0 for s in stages.values())
    assert type(result.plan).from_dict(result.plan.to_dict()).settings.stage_seconds == stages
