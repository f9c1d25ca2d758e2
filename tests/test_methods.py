"""Every compared method and SharVeT variant on tiny random models: budget, structure, round trip."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tiny import tiny_gpt2, tiny_llama, tokens

from sharvet import checkpoint
from sharvet.accounting import module_shapes
from sharvet.calibration import collect_stats
from sharvet.cli import main
from sharvet.config import CompressionConfig
from sharvet.decomposition import shared_matrix
from sharvet.decomposition.sparse import FipsConfig, sparse_init
from sharvet.install import install_group
from sharvet.kinds import GroupPlan, kind
from sharvet.methods import METHODS, preset_overrides, refine_overrides
from sharvet.models import adapter_for
from sharvet.modules import SparseProjectionLinear
from sharvet.pipeline import compress
from sharvet.planning import plan_compression
from sharvet.refinement.lora import attach_lora, load_lora, save_lora

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
FAST_FIPS = FipsConfig(steps=5, lr=1e-3, batch_tokens=64, tokens=128)


def run(family: str, method: str, ratio: float, **fields):
    model = MODELS[family]()
    ids = tokens()
    ref = model(ids).logits.detach()
    stats = collect_stats(adapter_for(model), ids, progress=False)
    cfg = CompressionConfig.preset(method, ratio=ratio, fips=FAST_FIPS, **fields)
    result = compress(model, stats, cfg, calibration_ids=ids, progress=False)
    return model, ids, ref, result


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_respects_the_budget_and_round_trips(family, method, tmp_path):
    model, ids, _, result = run(family, method, 0.5, k=3 if METHODS[method].kind != "dense" else None)
    budget = result.plan.settings.budget
    assert budget.planned <= budget.budget
    assert result.report.linear_compressed == budget.planned  # the accountant priced what was built
    assert result.report.linear_ratio == pytest.approx(0.5, abs=0.005)  # 6 layers: M = 3 is exact for dense
    out = checkpoint.save(model, tmp_path / "ckpt")
    loaded = checkpoint.load(out)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def _weight_of(adapter, layer: int, t: str) -> torch.Tensor:
    return adapter.get_module(layer, t).weight


@pytest.mark.parametrize("method,sets", [
    ("seq", [[0, 1], [2, 3], [4, 5]]),
    ("cycle", [[0, 3], [1, 4], [2, 5]]),
    ("cycle-rev", [[0, 5], [1, 4], [2, 3]]),
])
def test_whole_matrix_sharing_layer_to_set_map(method, sets):
    model, _, _, result = run("llama", method, 0.5)
    adapter = adapter_for(model)
    for t in adapter.type_names:
        assert [g.layers for g in result.plan.groups_of(t)] == sets
        for group in sets:
            first = _weight_of(adapter, group[0], t)
            assert all(_weight_of(adapter, i, t) is first for i in group)  # one Parameter per set
    assert result.report.linear_ratio == 0.5


def test_cycle_rev_follows_takase_when_sets_do_not_divide_layers():
    model, _, _, result = run("llama", "cycle-rev", 4 / 6)
    # L=6, M=4: sets 0,1,2,3 then 3,2 in reverse
    assert [g.layers for g in result.plan.groups_of("q")] == [[0], [1], [2, 5], [3, 4]]


@pytest.mark.parametrize("method", ["seq", "cycle", "cycle-rev"])
def test_full_capacity_reproduces_logits(method):
    model, ids, ref, result = run("gpt2", method, 1.0)
    assert all(len(g.layers) == 1 for g in result.plan.groups)
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=1e-5)


def test_weighted_mean_beats_plain_mean_on_the_inputs():
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(8, 6, generator=gen) for _ in range(3)]
    xs = [torch.randn(50, 6, generator=gen) * torch.linspace(0.1, 3, 6) for _ in range(3)]
    xtx = [x.T @ x for x in xs]

    def error(w):
        return sum(float((x @ (w - wl).T).pow(2).sum()) for x, wl in zip(xs, weights))

    plain, weighted = shared_matrix(weights), shared_matrix(weights, xtx)
    torch.testing.assert_close(plain, sum(weights) / 3)
    assert error(weighted) < error(plain)
    torch.testing.assert_close(shared_matrix(weights[:1], xtx[:1]), weights[0])


def test_fips_full_density_reproduces_the_original():
    model = tiny_llama()
    ids = tokens()
    ref = model(ids).logits.detach()
    adapter = adapter_for(model)
    width = adapter.shape("gate")[0]
    group = GroupPlan("gate+up+down", [0, 1], width, "sparse")
    shapes = module_shapes(adapter)
    group.nnz = [width * (shapes[t].d_out if t != "down" else shapes[t].d_in) for _, t in group.members]
    install_group(adapter, group, None, kind(group.kind).factors(adapter, group, None, False, "cpu"))
    assert isinstance(adapter.get_module(1, "down"), SparseProjectionLinear)
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-4, rtol=1e-4)


def test_sparse_init_keeps_the_largest_entries():
    mats = [torch.randn(10, 4), torch.randn(6, 4)]
    f = sparse_init(mats, 4, [5, 3])
    assert [len(v) for v in f.values] == [5, 3]
    assert all(int(i.max()) < m.shape[0] * 4 for i, m in zip(f.index, mats))


def test_fips_counts_indices_and_stores_them_sparse(tmp_path):
    model, ids, _, result = run("llama", "fips", 0.6, k=3)
    plan = result.plan
    sparse = [g for g in plan.groups if g.kind == "sparse"]
    assert {g.type for g in sparse} == {"gate+up+down"} and len(sparse) == 3
    kept = [g for g in plan.groups if g.kind == "dense"]
    assert {g.type for g in kept} == {"q", "k", "v", "o"} and all(len(g.layers) == 1 for g in kept)
    log = plan.settings.records["fips_reconstruction"]
    assert len(log) == 3 and all(r["error_after"] < r["error_before"] for r in log)
    out = checkpoint.save(model, tmp_path / "fips")
    with safe_open(str(out / checkpoint.WEIGHTS), "pt") as f:
        index = [k for k in f.keys() if k.endswith(".index")]
        assert index and all(f.get_tensor(k).dtype == torch.int32 for k in index)
        stored = sum(f.get_tensor(k).numel() for k in f.keys() if ".layers." in k and "norm" not in k)
    assert stored == result.report.linear_compressed  # values, indices and bases, each once


def test_fips_budget_errors():
    adapter = adapter_for(tiny_llama())
    shapes = module_shapes(adapter)
    kept = sum(s.parameters for t, s in shapes.items() if t not in ("gate", "up", "down"))
    kept /= sum(s.parameters for s in shapes.values())

    def plan(ratio):
        cfg = CompressionConfig.preset("fips", ratio=ratio, k=1, fips=FipsConfig(steps=0))
        return plan_compression(adapter, None, cfg, progress=False)

    with pytest.raises(ValueError, match="leaves no budget"):
        plan(kept * 0.9)
    with pytest.raises(ValueError, match="FiPS basis of size"):
        plan(kept + 0.001)


@pytest.mark.parametrize("method", ["seq", "basis-sharing", "fips"])
def test_lora_attaches_to_every_compressed_module(method, tmp_path):
    model, ids, _, result = run("llama", method, 0.5, k=None if method == "seq" else 3)
    peft_model = attach_lora(model, rank=2)
    adapter = adapter_for(model)
    shapes = module_shapes(adapter)
    expected = adapter.num_layers * sum(2 * (s.d_in + s.d_out) for s in shapes.values())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == expected
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    out = save_lora(peft_model, tmp_path / "lora")
    back = load_lora(out)
    torch.testing.assert_close(back(ids).logits, peft_model(ids).logits)


def test_presets_and_variants():
    assert CompressionConfig.preset("basis-sharing").layout.sigma is False
    cfg = CompressionConfig.preset("sharvet", ("R", "C", "K"))
    assert cfg.grouping == "random" and not cfg.similarity.use_cosine and not cfg.similarity.use_cka
    assert cfg.similarity.use_frobenius
    assert CompressionConfig.preset("sharvet", ("Agg",), grouping="dbscan").grouping == "dbscan"  # flag wins
    assert preset_overrides("sharvet", ("I",)) == {"grouping": "spectral", "allocation": "uniform"}
    assert refine_overrides(("L", "sigma")) == {"lm_only": True, "mode": "sigma"}
    assert refine_overrides(("LoRA",)) == {"mode": "lora"}
    with pytest.raises(ValueError, match="unknown variant"):
        CompressionConfig.preset("sharvet", ("X",))
    with pytest.raises(ValueError, match="ablations of sharvet"):
        CompressionConfig.preset("seq", ("R",))
    with pytest.raises(ValueError, match="unknown method"):
        CompressionConfig.preset("magic")


@pytest.mark.parametrize("argv,message", [
    (["--method", "seq", "--k", "3"], "--k does not apply"),
    (["--variant", "T", "--refine"], "variant T means no refinement"),
    (["--variant", "Q"], "unknown variant"),
    (["--method", "cycle", "--variant", "R"], "ablations of sharvet"),
])
def test_cli_rejects_bad_method_arguments(argv, message, tmp_path, capsys):
    assert main(["compress", "--output", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_plan_config_records_the_method(tmp_path):
    model, _, _, result = run("gpt2", "cycle", 0.5)
    out = checkpoint.save(model, tmp_path / "c")
    cfg = json.loads((out / "config.json").read_text())["sharvet"]
    assert cfg["method"] == "cycle" and {g["kind"] for g in cfg["groups"]} == {"dense"}
