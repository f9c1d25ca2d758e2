"""The inference form (sharvet.inference.prepare) computes the reference forward, in fewer matmuls."""
from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.inference import prepare
from sharvet.inference.modules import FusedFirstStage, StageSlice
from sharvet.inference.traffic import stored_bytes, weight_bytes_per_token
from sharvet.models import adapter_for
from sharvet.modules import SharedBasisLinear
from sharvet.pipeline import compress

from tiny import tiny_gpt2, tiny_llama, tokens


def compressed(method: str = "sharvet", family=tiny_llama, lambdas: str = "random", **cfg):
    """A tiny compressed model; ``lambdas``: random (as refined), equal (one per input, as foldable) or ones."""
    model = family(4)
    ids = tokens(4, 16)
    stats = collect_stats(adapter_for(model), ids, progress=False)
    compress(model, stats, CompressionConfig.preset(method, ratio=0.6, k=2, **cfg), progress=False)
    g = torch.Generator().manual_seed(1)
    adapter = adapter_for(model)
    for layer in range(adapter.num_layers):
        shared: dict[str, torch.Tensor] = {}
        for t in adapter.module_types:
            m = adapter.get_module(layer, t.name)
            if not isinstance(m, SharedBasisLinear):
                continue
            if m.sigma is not None:
                m.sigma.mul_(1 + 0.1 * torch.randn(m.sigma.shape, generator=g))
            if m.scale is not None and lambdas != "ones":
                fresh = 1 + 0.2 * torch.randn(m.scale.shape, generator=g)
                m.scale.copy_(shared.setdefault(t.input_key, fresh) if lambdas == "equal" else fresh)
    return model, ids


def converted(model, fuse, align=8):
    return prepare(copy.deepcopy(model), fuse=fuse, align=align)


def linear_calls(model, ids) -> int:
    """F.linear calls in one traced forward (a fused first stage is one call for the whole input)."""
    counts: Counter = Counter()

    def count(gm, _inputs):
        counts.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    torch.compile(model.forward, backend=count, fullgraph=True)(input_ids=ids)
    return sum(v for k, v in counts.items() if "linear" in k)


@pytest.mark.parametrize("fuse", ["best", "auto", "always", "never", "grouped"])
@pytest.mark.parametrize("lambdas", ["random", "equal", "ones"])
def test_float32_logits_equal_reference(fuse, lambdas):
    model, ids = compressed(lambdas=lambdas)
    ref = model(ids).logits
    fast = converted(model, fuse)
    torch.testing.assert_close(fast(ids).logits, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sharvet", "basis-sharing"])
def test_bfloat16_logits_within_rounding(method):
    model, ids = compressed(method)
    ref32 = model(ids).logits.detach()
    model = model.to(torch.bfloat16)
    ref = model(ids).logits.detach().float()
    fast = converted(model, "always")(ids).logits.detach().float()
    # the inference form rounds differently, not worse: its error against float32 is the reference's order
    err, ref_err = (fast - ref32).abs().max(), (ref - ref32).abs().max()
    assert err <= 2 * ref_err + 1e-3, (err, ref_err)
    torch.testing.assert_close(fast, ref, atol=4 * float(ref_err) + 1e-2, rtol=0)


def test_sigma_absorbed_and_lambda_folded_where_exact():
    model, ids = compressed(lambdas="equal")
    fast = converted(model, "never")
    report = fast.sharvet_inference
    adapter = adapter_for(fast)
    modules = [m for m in fast.modules() if isinstance(m, SharedBasisLinear)]
    assert modules and all(m.sigma is None for m in modules)
    assert report.sigma_absorbed == len(modules)
    # q/k/v and gate/up lambdas went into the two norms of each layer, down's into up's V; o keeps its own
    assert report.lambda_into_norm == 2 * adapter.num_layers
    assert report.lambda_into_source == adapter.num_layers
    assert report.lambda_kept == adapter.num_layers
    assert all(adapter.get_module(0, t).scale is None for t in ("q", "k", "v", "gate", "up", "down"))
    assert adapter.get_module(0, "o").scale is not None
    torch.testing.assert_close(fast(ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)


def test_unequal_lambdas_stay_in_the_modules():
    model, _ = compressed(lambdas="random")
    report = converted(model, "never").sharvet_inference
    assert report.lambda_into_norm == 0 and report.lambda_into_source == 4


def test_auto_stacks_only_what_copies_nothing():
    # Basis Sharing: consecutive groups for every type, so q, k, v of a layer always combine the same bases
    model, ids = compressed("basis-sharing")
    fast = converted(model, "auto", align=1)
    assert fast.sharvet_inference.fused_layers == {"q+k+v": 4, "gate+up": 4}
    assert fast.sharvet_inference.extra_parameters == 0
    assert stored_bytes(fast) == stored_bytes(model)
    layer = adapter_for(fast).layers[0]
    q, k = layer.self_attn.q_proj, layer.self_attn.k_proj
    assert isinstance(q, StageSlice) and q.stage is k.stage and isinstance(q.stage, FusedFirstStage)
    # one stacked matrix per group, held by both of its layers
    assert adapter_for(fast).layers[1].self_attn.q_proj.stage.weight is q.stage.weight
    # SharVeT after refinement: different lambdas per type, so stacking would copy the shared bases
    refined, _ = compressed("sharvet")
    assert converted(refined, "auto").sharvet_inference.fused_layers == {}
    stacked = converted(refined, "always")
    assert stacked.sharvet_inference.fused_layers == {"q+k+v": 4, "gate+up": 4}
    assert stacked.sharvet_inference.extra_parameters > 0


def test_stacked_first_stage_is_one_matmul_under_torch_compile():
    model, ids = compressed("basis-sharing")
    layers = adapter_for(model).num_layers
    # per layer: q, k, v, o, gate, up, down two matmuls each; stacked: 1 + 3, 2, 1 + 2, 2; plus the LM head
    assert linear_calls(converted(model, "never"), ids) == 14 * layers + 1
    fast = converted(model, "auto")
    assert linear_calls(fast, ids) == 11 * layers + 1
    torch._dynamo.reset()
    compiled = torch.compile(fast.forward, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(input_ids=ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)
    assert fast.model.layers[0].self_attn.q_proj.stage._memo._input is None  # the memo is dropped after the last slice


def test_stage_recomputes_for_another_input():
    torch.manual_seed(0)
    stage = FusedFirstStage(torch.nn.Parameter(torch.randn(5, 4)), [2, 3])
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    a = stage.part(x, 0)
    b = stage.part(y, 1)  # a different tensor: never the memo of x
    torch.testing.assert_close(a, x @ stage.weight[:2].T)
    torch.testing.assert_close(b, y @ stage.weight[2:].T)


def test_greedy_generate_gives_identical_tokens():
    model, ids = compressed(lambdas="equal")
    fast = converted(model, "always")
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    prompt = ids[:2, :6]
    assert torch.equal(fast.generate(prompt, **kw), model.generate(prompt, **kw))


def test_gpt2_layernorm_bias_folded():
    model, ids = compressed(family=tiny_gpt2, lambdas="equal")
    fast = converted(model, "auto")
    assert fast.sharvet_inference.lambda_into_norm == 2 * 4
    torch.testing.assert_close(fast(ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)


def test_weight_bytes_count_a_shared_basis_in_every_layer():
    model, _ = compressed("basis-sharing")
    adapter = adapter_for(model)
    per_use = sum(p.numel() * 4 for layer in adapter.layers for m in layer.modules()
                  for p in m.parameters(recurse=False))
    head = model.lm_head.weight.numel() * 4 + model.model.norm.weight.numel() * 4
    assert weight_bytes_per_token(model) == per_use + head
    assert weight_bytes_per_token(model) > stored_bytes(model) - model.model.embed_tokens.weight.numel() * 4
    # stacking changes what is stored, not what a token reads
    assert weight_bytes_per_token(converted(model, "auto")) == weight_bytes_per_token(converted(model, "never"))


def test_best_is_grouped_only_where_its_kernels_run(monkeypatch):
    """The default ``best`` resolves to ``grouped`` for a model wholly on a CUDA GPU with Triton (measured faster
    there), else to ``auto``; the report names what ran, and explicit modes are kept."""
    from types import SimpleNamespace

    from sharvet.inference import form, grouped

    model, _ = compressed()
    assert prepare(copy.deepcopy(model)).sharvet_inference.fuse == "auto"  # the CPU
    assert form.resolve_fuse(model, "always") == "always"
    gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda"))]))
    monkeypatch.setattr(grouped, "INTERPRET", False)
    for triton, expected in ((True, "grouped"), (False, "auto")):
        monkeypatch.setattr(grouped, "available", lambda: triton)
        assert form.resolve_fuse(gpu, "best") == expected
    monkeypatch.setattr(grouped, "available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert form.resolve_fuse(gpu, "best") == "auto"  # ROCm: the kernels were never run there
    monkeypatch.setattr(torch.version, "hip", None)
    half = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(d)) for d in ("cuda", "meta")]))
    assert form.resolve_fuse(half, "best") == "auto"  # offloaded weights: grouped refuses them


def test_refuses_bad_mode_and_lora_models():
    model, _ = compressed()
    with pytest.raises(ValueError, match="fuse must be"):
        prepare(model, fuse="sometimes")
    model.peft_config = {}
    with pytest.raises(ValueError, match="LoRA"):
        prepare(model)


@pytest.mark.parametrize("fuse", ["never", "always"])
def test_ranks_padded_to_the_alignment_with_zeros_change_nothing(fuse):
    model, ids = compressed()
    ranks = {m.rank for m in model.modules() if isinstance(m, SharedBasisLinear)}
    assert any(r % 8 for r in ranks)  # the planner's ranks are arbitrary
    fast = converted(model, fuse)
    report = fast.sharvet_inference
    assert report.ranks_padded > 0 and report.padding_parameters > 0
    torch.testing.assert_close(fast(ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)
    if fuse == "never":
        modules = [m for m in fast.modules() if isinstance(m, SharedBasisLinear)]
        assert all(m.rank % 8 == 0 and m.basis.shape[0] == m.v.shape[1] == m.rank for m in modules)
        bases = {id(m.basis) for m in modules}
        originals = {id(m.basis) for m in model.modules() if isinstance(m, SharedBasisLinear)}
        assert len(bases) == len(originals)  # a shared basis is padded once and stays shared
    unaligned = converted(model, fuse, align=1)
    assert unaligned.sharvet_inference.ranks_padded == unaligned.sharvet_inference.padding_parameters == 0
    if fuse == "never":  # float32: 4 bytes per added zero
        assert stored_bytes(fast) - stored_bytes(unaligned) == 4 * report.padding_parameters
