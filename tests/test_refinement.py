"""Refinement (paper section 3.4): trainable vectors, eq. 13, trainer, resume, absorption, LoRA baseline."""
from __future__ import annotations

import argparse
import copy
import json
import math
import re
import signal

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from sharvet import checkpoint
from sharvet.allocation import LayerLayout
from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.models import adapter_for
from sharvet.modules import SharedBasisLinear
from sharvet.pipeline import compress, plan_of
from sharvet.refinement import (
    RefineConfig, add_refine_arguments, attach_lora, feature_loss, finalize, kd_loss, l2_deviation,
    load_lora, mark_trainable, parameter_summary, plot_comparison, read_history, refine, refine_config_from_args,
    refinement_loss, save_lora, LossWeights,
)
from sharvet.refinement import state as ckpt_state
from sharvet.refinement.losses import lm_loss
from sharvet.refinement import trainer as trainer_module

VOCAB = 96


def _teacher(dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, attention_dropout=dropout)
    return LlamaForCausalLM(cfg).eval()


def _compressed(teacher: LlamaForCausalLM, layout: LayerLayout | None = None) -> LlamaForCausalLM:
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    student = copy.deepcopy(teacher)
    stats = collect_stats(adapter_for(student), ids, progress=False)
    compress(student, stats, CompressionConfig(ratio=0.5, k=1, layout=layout or LayerLayout()), progress=False)
    return student


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: threading only adds overhead (and on a loaded machine, a lot of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """Teacher (with attention dropout, so resuming must restore the RNG) and its compressed student."""
    teacher = _teacher(dropout=0.1)
    return teacher, _compressed(teacher)


@pytest.fixture
def pair(models):
    teacher, student = models
    return copy.deepcopy(teacher), copy.deepcopy(student)


def _ids(n: int = 8, length: int = 12, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _cfg(tmp_path, **kw) -> RefineConfig:
    return RefineConfig(**{"output_dir": str(tmp_path / "run"), "progress": False, "lr": 1e-2, "cpu": True,
                           "batch_size": 2, **kw})


def _vectors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _grads_after_backward(teacher, student, mode):
    trainable = set(map(id, mark_trainable(student, mode)))
    ids = _ids(2)
    with torch.no_grad():
        t = teacher(ids, output_hidden_states=True)
    s = student(ids, output_hidden_states=True)
    params = [p for p in student.parameters() if p.requires_grad]
    loss = refinement_loss(s.logits, ids, LossWeights(), student_hidden=s.hidden_states, teacher_logits=t.logits,
                           teacher_hidden=t.hidden_states, params=params, initial=[p.detach().clone() for p in params])
    loss.total.backward()
    return trainable, {id(p): p.grad for p in student.parameters()}


def _trained_tensor(module: SharedBasisLinear, attr: str) -> torch.nn.Parameter:
    """lambda itself; for sigma its relative change delta (``sigma = sigma0 (1 + delta)``)."""
    return module.sigma_delta if attr == "sigma" else getattr(module, attr)


# --- trainable vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,attrs", [("both", {"scale", "sigma"}), ("lambda", {"scale"}), ("sigma", {"sigma"})])
def test_only_selected_vectors_receive_gradients(pair, mode, attrs):
    teacher, student = pair
    trainable, grads = _grads_after_backward(teacher, student, mode)
    modules = [m for m in student.modules() if isinstance(m, SharedBasisLinear)]
    expected = {id(_trained_tensor(m, a)) for m in modules for a in attrs}
    assert trainable == expected
    assert all((grads[i] is not None) == (i in expected) for i in grads)
    assert all(grads[i].abs().sum() > 0 for i in expected)


def test_mark_trainable_refuses_models_without_the_vectors():
    student = _compressed(_teacher(), LayerLayout(sigma=False, scale=True))
    with pytest.raises(ValueError, match="sigma"):
        mark_trainable(student, "both")
    assert len(mark_trainable(student, "lambda")) == 14  # 7 projections x 2 layers
    with pytest.raises(ValueError, match="mode"):
        mark_trainable(student, "everything")


def test_parameter_summary_counts_shared_basis_once(pair):
    _, student = pair
    mark_trainable(student, "both")
    modules = [m for m in student.modules() if isinstance(m, SharedBasisLinear)]
    summary = parameter_summary(student)
    assert summary.trainable == sum(m.rank + m.in_features for m in modules)  # paper Table 1: r + d_in
    unique = {id(p): p.numel() for p in student.parameters()}
    assert summary.total == sum(unique.values())
    assert "trainable parameters" in summary.line()


# --- losses -------------------------------------------------------------------------------------------


def test_kd_is_averaged_per_token():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    temp = 2.0
    expected = 0.0
    for b in range(2):
        for i in range(3):
            p = torch.softmax(t[b, i] / temp, -1)
            q = torch.softmax(s[b, i] / temp, -1)
            expected += float((p * (p.log() - q.log())).sum())
    expected = expected / 6 * temp**2
    assert kd_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_loss_defaults_to_decoder_outputs():
    a = tuple(torch.zeros(1, 2, 3) for _ in range(3))
    b = (torch.full((1, 2, 3), 100.0), torch.ones(1, 2, 3), torch.full((1, 2, 3), 3.0))
    assert feature_loss(a, b).item() == pytest.approx((1 + 9) / 2)  # embeddings (index 0) left out
    assert feature_loss(a, b, layers=(0,)).item() == pytest.approx(1e4)


def test_l2_is_zero_at_init_and_measures_deviation_from_init():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    init = [p.detach().clone()]
    assert l2_deviation([p], init).item() == 0.0
    with torch.no_grad():
        p.add_(torch.tensor([0.5, -1.0]))
    assert l2_deviation([p], init).item() == pytest.approx(1.25)


def test_zero_weights_skip_terms():
    logits, ids = torch.randn(1, 4, VOCAB), torch.randint(0, VOCAB, (1, 4))
    out = refinement_loss(logits, ids, LossWeights(kd=0, feature=0, l2=0))
    assert set(out.terms) == {"lm", "loss"}
    assert out.total.item() == pytest.approx(F.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


# --- training -----------------------------------------------------------------------------------------


def test_loss_decreases_on_an_overfitting_batch(pair, tmp_path):
    teacher, student = pair
    ids = _ids(2, 16)
    result = refine(student, teacher, ids, _cfg(tmp_path, epochs=10, batch_size=2, lr=5e-2))
    losses = [r["loss"] for r in result.history]
    gaps = [r["loss"] - r["lm"] for r in result.history]  # the teacher-alignment part of eq. 13
    assert len(losses) == 10 and result.finished
    assert losses[-1] < losses[0]
    assert gaps[-1] < 0.6 * gaps[0]  # random tokens leave the LM term near ln(V); the discrepancy falls fast


def test_history_and_plot_are_written(pair, tmp_path):
    teacher, student = pair
    result = refine(student, teacher, _ids(8), _cfg(tmp_path, epochs=1, batch_size=2))
    records = read_history(result.output_dir / "history.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"step", "epoch", "lr", "lm", "kd", "feature", "l2", "loss", "tokens_per_s"} <= set(records[0])
    assert records[0]["l2"] == 0.0  # vectors are at their initial values during the first step
    assert (result.output_dir / "loss.png").stat().st_size > 1000
    assert result.final["loss"] == records[-1]["loss"]
    runs = {"folder": result.output_dir, "file": result.output_dir / "history.jsonl"}
    assert plot_comparison(runs, tmp_path / "cmp.png").stat().st_size > 1000


def test_matched_loss_scales_weight_each_term_to_the_initial_lm_loss(pair, tmp_path):
    teacher, student = pair
    ids = _ids(4)
    batch = ids[torch.randperm(4, generator=torch.Generator().manual_seed(0))[:2]]  # epoch 0's first batch
    with torch.no_grad():
        s_out = copy.deepcopy(student).eval()(input_ids=batch, output_hidden_states=True)
        t_out = teacher.eval()(input_ids=batch, output_hidden_states=True)
    lm = float(lm_loss(s_out.logits, batch))
    kd = float(kd_loss(s_out.logits, t_out.logits))
    feat = float(feature_loss(s_out.hidden_states, t_out.hidden_states))
    result = refine(copy.deepcopy(student), teacher, ids, _cfg(tmp_path / "a", epochs=1, batch_size=2,
                                                               match_loss_scales=True))
    assert result.loss_weights["kd"] == pytest.approx(lm / kd, rel=1e-4)
    assert result.loss_weights["feature"] == pytest.approx(lm / feat, rel=1e-4)
    assert result.record()["loss_weights"] == result.loss_weights
    off = refine(copy.deepcopy(student), teacher, ids, _cfg(tmp_path / "b", epochs=1, batch_size=2,
                                                             match_loss_scales=True, kd_weight=0.0))
    assert off.loss_weights["kd"] == 0.0 and off.loss_weights["feature"] > 0  # a weight of 0 stays off
    twice = refine(copy.deepcopy(student), teacher, ids, _cfg(tmp_path / "c", epochs=1, batch_size=2,
                                                               match_loss_scales=True, kd_weight=2.0))
    assert twice.loss_weights["kd"] == pytest.approx(2 * lm / kd, rel=1e-4)  # an explicit weight scales its match
    assert twice.loss_weights["feature"] == pytest.approx(lm / feat, rel=1e-4)  # the other stays matched


def test_lm_only_needs_no_teacher(pair, tmp_path):
    _, student = pair
    result = refine(student, None, _ids(4), _cfg(tmp_path, epochs=1, lm_only=True))
    assert set(result.final) >= {"lm", "loss"} and "kd" not in result.final
    with pytest.raises(ValueError, match="teacher"):
        refine(student, None, _ids(4), _cfg(tmp_path / "b", epochs=1))


def test_gradient_checkpointing_changes_nothing_but_memory(pair, tmp_path):
    teacher, student = pair
    runs = [refine(copy.deepcopy(student), teacher, _ids(4),
                   _cfg(tmp_path / str(gc), epochs=1, gradient_checkpointing=gc)) for gc in (False, True)]
    assert [r["loss"] for r in runs[0].history] == pytest.approx([r["loss"] for r in runs[1].history], rel=1e-6)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in runs[1].model.modules())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; the other tests made it CPU-only, this one needs the GPU."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_bf16_autocast_with_teacher_on_cpu(pair, tmp_path, dtype, fresh_accelerate_state):
    teacher, student = pair
    student.to(dtype)
    cfg = _cfg(tmp_path, epochs=1, cpu=False, teacher_device="cpu", gradient_checkpointing=True)
    result = refine(student, teacher, _ids(8), cfg)
    assert all(p.is_cuda and p.dtype == dtype for p in _vectors(result.model).values())
    saved = ckpt_state.read_vectors(ckpt_state.latest_checkpoint(result.output_dir), "vectors")
    assert all(v.dtype == torch.float32 for v in saved.values())  # trained and checkpointed in float32
    assert all(math.isfinite(v) for v in result.final.values())
    ids = _ids(2, seed=5).cuda()
    with torch.no_grad():
        before = result.model(ids).logits.float()
    model = finalize(result.model, result.record())
    assert all(p.dtype == dtype for p in model.parameters())
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "ck"), device="cuda")
    with torch.no_grad():
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        assert torch.allclose(loaded(ids).logits.float(), before, atol=tol)


def _straight_and_stopped_then_resumed(pair, tmp_path):
    teacher, student = pair
    ids = _ids(8)
    base = dict(epochs=3, batch_size=2, grad_accum=2)  # 2 optimizer steps per epoch, 6 in all
    straight = refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "a", **base))
    stopped = refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "b", max_steps=3, **base))
    assert stopped.steps == 3 and not stopped.finished
    resumed = refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "b", **base), resume=True)
    return straight, resumed


def _assert_same_run(straight, resumed):
    a, b = _vectors(straight.model), _vectors(resumed.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = {"tokens_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.history] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]
    assert resumed.steps == 6 and resumed.finished


def test_resume_after_stop_equals_uninterrupted_run(pair, tmp_path):
    straight, resumed = _straight_and_stopped_then_resumed(pair, tmp_path)
    _assert_same_run(straight, resumed)
    assert ckpt_state.latest_checkpoint(tmp_path / "b" / "run").name == "step-00000006"


def test_resume_after_ctrl_c_equals_uninterrupted_run(pair, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = trainer_module._micro_step

    def step_then_interrupt(run, ids):
        calls["n"] += 1
        if calls["n"] == 8:  # call 1 measures the loss scales; call 8 is the first micro-batch of step 4
            signal.raise_signal(signal.SIGINT)
        return original(run, ids)

    teacher, student = pair
    ids = _ids(8)
    base = dict(epochs=3, batch_size=2, grad_accum=2)
    straight = refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "a", **base))
    monkeypatch.setattr(trainer_module, "_micro_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "b", **base))
    monkeypatch.setattr(trainer_module, "_micro_step", original)
    # the signal arrived inside step 4's accumulation: the checkpoint is at the end of step 4, exactly
    assert ckpt_state.latest_checkpoint(tmp_path / "b" / "run").name == "step-00000004"
    assert len(read_history(tmp_path / "b" / "run" / "history.jsonl")) == 4
    resumed = refine(copy.deepcopy(student), copy.deepcopy(teacher), ids, _cfg(tmp_path / "b", **base), resume=True)
    _assert_same_run(straight, resumed)


def test_resume_refuses_a_different_setup(pair, tmp_path):
    teacher, student = pair
    cfg = _cfg(tmp_path, epochs=1, max_steps=1)
    refine(copy.deepcopy(student), teacher, _ids(8), cfg)
    with pytest.raises(FileExistsError):
        refine(copy.deepcopy(student), teacher, _ids(8), cfg)
    with pytest.raises(ValueError, match="config"):
        refine(copy.deepcopy(student), teacher, _ids(8), _cfg(tmp_path, epochs=1, lr=0.5), resume=True)
    with pytest.raises(ValueError, match="data"):
        refine(copy.deepcopy(student), teacher, _ids(8, seed=9), cfg, resume=True)


def test_state_tree_round_trip(tmp_path):
    tree = {"state": {0: {"step": torch.tensor(3.0), "m": torch.ones(2)}},
            "groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "params": [0], "x": None}]}
    ckpt_state.save_tree(tree, tmp_path, "t")
    back = ckpt_state.load_tree(tmp_path, "t")
    assert back["groups"] == tree["groups"] and list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["m"], tree["state"][0]["m"])
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


# --- absorption and saving ------------------------------------------------------------------------------


def test_finalize_keeps_logits_and_round_trips(pair, tmp_path):
    teacher, student = pair
    result = refine(student, teacher, _ids(8), _cfg(tmp_path, epochs=1))
    ids = _ids(2, seed=5)
    with torch.no_grad():
        before = result.model(ids).logits
    model = finalize(result.model, result.record())
    assert all(m.sigma is None for m in model.modules() if isinstance(m, SharedBasisLinear))
    assert not any(p.requires_grad for p in model.parameters())
    plan = plan_of(model)
    assert plan.layout.sigma is False and plan.layout.scale is True
    assert plan.settings.refinement["config"]["mode"] == "both"
    assert plan.settings.refinement["final_losses"]["loss"] == result.final["loss"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "ck"))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, before, atol=1e-5)
    assert plan_of(loaded).settings.refinement["steps"] == result.steps


# --- LoRA baseline ----------------------------------------------------------------------------------------


def test_lora_path_trains_only_adapters(pair, tmp_path):
    teacher, student = pair
    basis = {id(m.basis): m.basis.detach().clone() for m in student.modules() if isinstance(m, SharedBasisLinear)}
    frozen = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = refine(student, teacher, _ids(8), _cfg(tmp_path, epochs=1, mode="lora", lora_rank=2))
    model = result.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert result.parameters.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = _ids(2, seed=5)
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    base = model.get_base_model()
    shared = {id(m.basis): m.basis for m in base.modules() if isinstance(m, SharedBasisLinear)}
    assert shared.keys() == basis.keys() and all(torch.equal(shared[k], basis[k]) for k in basis)
    unchanged = {n.replace(".base_layer", ""): p for n, p in base.named_parameters() if "lora_" not in n}
    assert all(torch.equal(unchanged[n], frozen[n]) for n in frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
    out = save_lora(model, tmp_path / "lora-ck")
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        assert torch.allclose(load_lora(out)(ids).logits, before, atol=1e-5)
        assert torch.allclose(model(ids).logits, before)  # saving left the adapters in place
    with pytest.raises(NotImplementedError):
        model.merge_and_unload()


def test_attach_lora_counts(pair):
    _, student = pair
    model = attach_lora(student, rank=4)
    modules = [m for m in student.modules() if isinstance(m, SharedBasisLinear)]
    expected = sum(4 * (m.in_features + m.out_features) for m in modules)  # paper Table 1: r_A (d_in + d_out)
    assert parameter_summary(model).trainable == expected


# --- command line -------------------------------------------------------------------------------------------


def test_command_line_round_trip(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    add_refine_arguments(parser)
    assert refine_config_from_args(parser.parse_args(["--match-loss-scales"])).match_loss_scales
    args = parser.parse_args(["--refine-mode", "lambda", "--lr", "3e-4", "--grad-accum", "4", "--lm-only",
                              "--feature-layers", "1,3", "--teacher-device", "cpu", "--seed", "7",
                              "--refine-output", str(tmp_path), "--checkpoint-every", "50"])
    cfg = refine_config_from_args(args)
    assert (cfg.mode, cfg.lr, cfg.grad_accum, cfg.lm_only, cfg.seed) == ("lambda", 3e-4, 4, True, 7)
    assert cfg.feature_layers == (1, 3) and cfg.teacher_device == "cpu" and cfg.checkpoint_every == 50
    assert cfg.loss_weights().needs_teacher is False
    assert json.loads(json.dumps(cfg.to_dict()))["feature_layers"] == [1, 3]
    with pytest.raises(ValueError):
        refine_config_from_args(parser.parse_args(["--lr", "-1"]))
    assert RefineConfig().weight_decay == 0.0


def test_mode_and_epochs_follow_the_method_unless_flags_say():
    """The paper trains every model two epochs (`--method sharvet` as published); the default method four."""
    from sharvet.methods import DEFAULT_METHOD, method

    parser = argparse.ArgumentParser()
    add_refine_arguments(parser)
    paper = refine_config_from_args(parser.parse_args([]), method=method("sharvet"))
    ours = refine_config_from_args(parser.parse_args([]), method=method(DEFAULT_METHOD))
    lora = refine_config_from_args(parser.parse_args(["--epochs", "3"]), method=method("basis-sharing"))
    assert (paper.mode, paper.epochs) == ("both", 2) and (ours.mode, ours.epochs) == ("factors", 4)
    assert (lora.mode, lora.epochs) == ("lora", 3)
    assert refine_config_from_args(parser.parse_args([])).epochs == RefineConfig().epochs == ours.epochs


def test_presets_default_and_reference():
    """The default: matched weights, relative sigma, the probe's learning rates; 'reference': the authors' code."""
    default, ref = RefineConfig(), RefineConfig(preset="reference")
    assert default.matches_loss_scales() and default.sigma_is_relative()
    assert (default.learning_rate(), RefineConfig(mode="lora").learning_rate()) == (1e-2, 3e-3)
    assert not ref.matches_loss_scales() and not ref.sigma_is_relative() and ref.learning_rate() == 1e-3
    w = ref.loss_weights()
    assert (w.kd, w.feature, w.l2, w.kd_per_sequence) == (1e-3, 5.0, 1e-8, True)
    explicit = RefineConfig(kd_weight=0.5)  # an explicit weight is used as given ...
    assert not explicit.matches_loss_scales() and explicit.loss_weights().kd == 0.5
    assert RefineConfig(kd_weight=0.5, match_loss_scales=True).matches_loss_scales()  # ... unless M asks
    assert not RefineConfig(lm_only=True).matches_loss_scales()
    with pytest.raises(ValueError, match="preset"):
        RefineConfig(preset="paper-ish").validate()
    parser = argparse.ArgumentParser()
    add_refine_arguments(parser)
    cfg = refine_config_from_args(parser.parse_args(["--refine-preset", "reference"]))
    assert cfg.preset == "reference" and cfg.learning_rate() == 1e-3


# --- sigma trained relative to its start --------------------------------------------------------------------


def _sigma_moves(student, teacher, tmp_path, *, scale: float, relative: bool) -> float:
    """Median relative change of sigma after a short sigma-only run, with sigma scaled up by ``scale``
    (and V down by as much, so the model computes the same function)."""
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, SharedBasisLinear):
                m.sigma.mul_(scale)
                m.v.div_(scale)
    before = {n: p.detach().clone() for n, p in student.named_parameters() if n.endswith("sigma")}
    result = refine(student, teacher, _ids(4), _cfg(tmp_path, mode="sigma", epochs=2, batch_size=2,
                                                    relative_sigma=relative, lr=1e-2))
    after = {n: p.detach() for n, p in result.model.named_parameters()}
    return float(torch.cat([(after[n] / p - 1).abs() for n, p in before.items()]).median())


def test_relative_sigma_trains_whatever_its_scale(pair, tmp_path):
    teacher, student = pair
    small = _sigma_moves(copy.deepcopy(student), teacher, tmp_path / "a", scale=1.0, relative=True)
    large = _sigma_moves(copy.deepcopy(student), teacher, tmp_path / "b", scale=1e4, relative=True)
    absolute = _sigma_moves(copy.deepcopy(student), teacher, tmp_path / "c", scale=1e4, relative=False)
    assert small > 1e-3 and large == pytest.approx(small, rel=0.05)  # the same steps, relative to sigma
    assert absolute < small / 100  # the reference's absolute sigma barely moves at ~1e4 (Adam: ~lr per step)


def test_relative_sigma_leaves_a_plain_sigma_that_resumes_and_saves(pair, tmp_path):
    teacher, student = pair
    result = refine(student, teacher, _ids(4), _cfg(tmp_path, mode="both", epochs=1, batch_size=2, max_steps=1))
    names = {n for n, _ in result.model.named_parameters()}
    assert not any("sigma_delta" in n for n in names) and any(n.endswith(".sigma") for n in names)
    saved = ckpt_state.read_vectors(ckpt_state.latest_checkpoint(result.output_dir), "vectors")
    delta = [v for k, v in saved.items() if k.endswith(".sigma_delta")]
    assert delta and all(d.abs().max() > 0 for d in delta)  # the checkpoint holds delta, moved from 0
    assert type(next(m for m in result.model.modules() if isinstance(m, SharedBasisLinear))) is SharedBasisLinear
    modules = [m for m in result.model.modules() if isinstance(m, SharedBasisLinear)]
    assert result.parameters.trainable == sum(m.rank + m.in_features for m in modules)  # counted while training


# --- distillation weight as the reference sums it -----------------------------------------------------------


def test_logit_losses_in_blocks_equal_the_plain_terms():
    from sharvet.refinement.losses import logit_losses

    torch.manual_seed(0)
    s = torch.randn(2, 7, VOCAB, requires_grad=True)
    t, ids = torch.randn(2, 7, VOCAB), torch.randint(0, VOCAB, (2, 7))
    for temp in (1.0, 2.0):
        lm, kd = logit_losses(s, ids, t, temp, block=3)
        assert lm.item() == pytest.approx(lm_loss(s, ids).item(), rel=1e-5)
        assert kd.item() == pytest.approx(kd_loss(s, t, temp).item(), rel=1e-5)
        g_blocks = torch.autograd.grad(lm + kd, s)[0]
        g_plain = torch.autograd.grad(lm_loss(s, ids) + kd_loss(s, t, temp), s)[0]
        assert torch.allclose(g_blocks, g_plain, atol=1e-6)


def test_kd_per_sequence_multiplies_the_weight_by_the_length():
    torch.manual_seed(0)
    s, t, ids = torch.randn(2, 6, VOCAB), torch.randn(2, 6, VOCAB), torch.randint(0, VOCAB, (2, 6))
    per_token = refinement_loss(s, ids, LossWeights(kd=1e-3, feature=0, l2=0), teacher_logits=t)
    summed = refinement_loss(s, ids, LossWeights(kd=1e-3, feature=0, l2=0, kd_per_sequence=True), teacher_logits=t)
    assert per_token.terms["kd"] == summed.terms["kd"]  # logged per token either way
    lm, kd = float(per_token.terms["lm"]), float(per_token.terms["kd"])
    assert float(summed.total) == pytest.approx(lm + 1e-3 * 6 * kd, rel=1e-5)
    # the reference: kl_div(log_s, log_t, reduction="batchmean") on (batch, seq, vocab) = per-token mean x seq
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    assert float(ref) == pytest.approx(6 * kd, rel=1e-5)


# --- numerical guard --------------------------------------------------------------------------------------------


def test_divergence_stops_with_one_clear_error_and_keeps_the_last_good_checkpoint(pair, tmp_path):
    from sharvet.cli import USER_ERRORS
    from sharvet.refinement import NonFiniteLossError

    teacher, student = pair
    cfg = _cfg(tmp_path, epochs=4, batch_size=2, lr=1e6, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step \d+: non-finite .*lm .*Lower --lr") as err:
        refine(student, teacher, _ids(8), cfg)
    assert isinstance(err.value, USER_ERRORS)  # one line from the CLI (exit 4: it is also a NonFiniteError)
    assert "\n" not in str(err.value)
    step = int(re.search(r"step (\d+)", str(err.value)).group(1))
    assert step > 1  # so there is a good checkpoint to keep
    last = ckpt_state.latest_checkpoint(tmp_path / "run")
    assert last.name == ckpt_state.checkpoint_name(step - 1)
    assert all(torch.isfinite(v).all() for v in ckpt_state.read_vectors(last, "vectors").values())
    assert len(read_history(tmp_path / "run" / "history.jsonl")) == step - 1


def test_finalize_and_save_refuse_non_finite_tensors(pair):
    from sharvet.refinement import NonFiniteLossError

    _, student = pair
    with torch.no_grad():
        next(m for m in student.modules() if isinstance(m, SharedBasisLinear)).scale[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        finalize(student)


def test_relative_sigma_in_bfloat16_model():
    """A bf16 checkpoint refines: sigma keeps its dtype under the relative parametrisation, moves, and is released."""
    from sharvet.modules import SharedBasisLinear
    from sharvet.refinement.vectors import mark_trainable, release_sigma

    model = _compressed(_teacher()).to(torch.bfloat16)
    module = next(m for m in model.modules() if isinstance(m, SharedBasisLinear))
    sigma0 = module.sigma.detach().clone()
    params = mark_trainable(model, "sigma")
    assert module.sigma.dtype == torch.bfloat16
    with torch.no_grad():
        for p in params:
            p.add_(0.5)
    release_sigma(model)
    assert module.sigma.dtype == torch.bfloat16 and not module.sigma.requires_grad
    assert torch.allclose(module.sigma.float(), sigma0.float() * 1.5, rtol=1e-2)


def test_factors_mode_trains_every_layers_v_at_its_own_rate(pair, tmp_path):
    from sharvet.refinement.vectors import optimizer_groups

    teacher, student = pair
    trainable, _ = _grads_after_backward(teacher, copy.deepcopy(student), "factors")
    modules = [m for m in student.modules() if isinstance(m, SharedBasisLinear)]
    assert len(trainable) == 3 * len(modules)  # lambda, sigma's delta and V of every module; no basis
    params = mark_trainable(copy.deepcopy(student), "factors")
    groups = optimizer_groups(params, 1e-2, 1e-3)
    assert groups[0]["lr"] == 1e-2 and {p.dim() for p in groups[0]["params"]} == {1}
    for g in groups[1:]:  # one group per V, at the relative rate times its RMS
        (v,) = g["params"]
        assert v.dim() == 2 and g["lr"] == pytest.approx(1e-3 * float(v.pow(2).mean().sqrt()))
    lora_like = [torch.nn.Parameter(torch.zeros(4, 8)), torch.nn.Parameter(torch.randn(8, 4))]
    assert optimizer_groups(lora_like, 3e-3, None) == [{"params": lora_like, "lr": 3e-3}]  # LoRA: one rate
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = refine(student, teacher, _ids(4, 16), _cfg(tmp_path, mode="factors", epochs=2, lr_matrices=1e-3))
    after = dict(result.model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before if n.endswith(".v"))
    assert all(torch.equal(before[n], after[n]) for n in before if n.endswith(".basis"))
    assert result.parameters.trainable == sum(m.v.numel() + m.sigma.numel() + m.scale.numel() for m in modules)


def test_all_mode_trains_each_shared_basis_once(pair, tmp_path):
    from sharvet.refinement.vectors import optimizer_groups

    """Mode all adds the groups' bases: one trained tensor per basis however many layers share it, and the
    refined model still shares it (the budget is unchanged)."""
    teacher, student = pair
    modules = [m for m in student.modules() if isinstance(m, SharedBasisLinear)]
    bases = {id(m.basis): m.basis for m in modules}
    assert len(bases) < len(modules)  # the fixture shares bases across layers
    model = copy.deepcopy(student)
    params = mark_trainable(model, "all")
    assert len(params) == 3 * len(modules) + len(bases)
    shared = frozenset(id(m.basis) for m in model.modules() if isinstance(m, SharedBasisLinear))
    # the bases at their own relative rate, every V at V's
    groups = optimizer_groups(params, 1e-2, 1e-3, bases=shared, lr_bases=1e-4)
    rates = {id(p): g["lr"] / float(p.detach().pow(2).mean().sqrt()) for g in groups[1:] for p in g["params"]}
    assert {round(r, 9) for i, r in rates.items() if i in shared} == {1e-4}
    assert {round(r, 9) for i, r in rates.items() if i not in shared} == {1e-3}
    # the trainer finds the bases by name: at rate 0 they stay, V moves
    frozen = refine(copy.deepcopy(student), teacher, _ids(4, 16),
                    _cfg(tmp_path / "b0", mode="all", epochs=1, lr_matrices=1e-3, lr_bases=0.0)).model
    for (n, p), (_, q) in zip(student.named_parameters(), frozen.named_parameters()):
        if n.endswith((".basis", ".v")):
            assert torch.equal(p, q) == n.endswith(".basis"), n
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = refine(student, teacher, _ids(4, 16), _cfg(tmp_path, mode="all", epochs=2, lr_matrices=1e-3))
    after = dict(result.model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before if n.endswith((".v", ".basis")))
    refined = [m for m in result.model.modules() if isinstance(m, SharedBasisLinear)]
    assert len({id(m.basis) for m in refined}) == len(bases)


def test_training_on_padded_ranks_follows_the_unpadded_trajectory(pair, tmp_path):
    """Ranks padded to a multiple of 8 while training (exact zeros) give the model that unpadded training
    gives, trimmed back to the planned ranks and shapes (relative sigma and V included)."""
    teacher, student = pair
    ranks = [m.rank for m in student.modules() if isinstance(m, SharedBasisLinear)]
    assert any(r % 8 for r in ranks)  # the fixture has ranks that get padded
    models = {align: refine(copy.deepcopy(student), teacher, _ids(4, 16),
                            _cfg(tmp_path / str(align), mode="factors", epochs=2, lr_matrices=1e-3,
                                 align=align)).model for align in (1, 8)}
    assert [m.rank for m in models[8].modules() if isinstance(m, SharedBasisLinear)] == ranks
    plain, padded = (dict(models[a].named_parameters()) for a in (1, 8))
    assert plain.keys() == padded.keys()
    for name, p in plain.items():
        assert p.shape == padded[name].shape, name
        assert torch.allclose(p, padded[name], rtol=1e-4, atol=1e-6), name


def test_compiled_layers_share_graphs_and_train_as_eager(tmp_path):
    """``compile=True``: layers of different ranks share their graphs (fewer graphs than distinct rank sets,
    where static shapes compile one per layer), the run ends where eager does, and the model and the teacher
    come back eager."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=10,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB)).eval()
    student = copy.deepcopy(teacher)
    ids = _ids(4, 16)
    compress(student, collect_stats(adapter_for(student), ids, progress=False), CompressionConfig(ratio=0.5, k=5),
             progress=False)
    rank_sets = {tuple(m.rank for m in layer.modules() if isinstance(m, SharedBasisLinear))
                 for layer in student.model.layers}
    torch._dynamo.reset()
    counters.clear()
    cfg = dict(mode="factors", epochs=1, lr_matrices=1e-3, gradient_checkpointing=True)
    compiled = refine(copy.deepcopy(student), teacher, ids, _cfg(tmp_path / "c", compile=True, **cfg))
    graphs = counters["stats"]["unique_graphs"]
    eager = refine(copy.deepcopy(student), teacher, ids, _cfg(tmp_path / "e", **cfg))
    assert 0 < graphs < len(rank_sets)
    plain = dict(eager.model.named_parameters())
    for name, p in compiled.model.named_parameters():
        assert torch.allclose(p, plain[name], rtol=1e-4, atol=1e-6), name
    assert all(layer._compiled_call_impl is None for layer in [*compiled.model.model.layers, *teacher.model.layers])
    torch._dynamo.reset()


def test_factors_mode_trains_what_the_layout_stores():
    student = _compressed(_teacher(), LayerLayout(sigma=True, scale=False))  # Basis Sharing's layout
    params = mark_trainable(student, "factors")
    assert len(params) == 2 * 14 and {p.dim() for p in params} == {1, 2}  # sigma's delta and V of 14 modules


def test_lora_trains_every_adapter_at_the_lora_rate(pair, tmp_path, monkeypatch):
    """Only mode factors gives matrices their own rates; LoRA's A and B keep --lr (a regression once)."""
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen.append([g["lr"] for g in groups])
        return real(groups, **kw)

    monkeypatch.setattr(trainer_module.torch.optim, "AdamW", spy)
    teacher, student = pair
    refine(student, teacher, _ids(4, 16), _cfg(tmp_path, mode="lora", epochs=1, lr=3e-3))
    assert seen == [[3e-3]]



def test_compile_is_suggested_only_for_long_uncompiled_runs_on_a_gpu():
    from sharvet.refinement.trainer import COMPILE_PAYS_FROM_TOKENS, compile_hint

    long_run = COMPILE_PAYS_FROM_TOKENS
    assert "--compile" in compile_hint(long_run, RefineConfig(), gpu=True)
    assert compile_hint(long_run - 1, RefineConfig(), gpu=True) is None
    assert compile_hint(long_run, RefineConfig(), gpu=False) is None
    assert compile_hint(long_run, RefineConfig(compile=True), gpu=True) is None
    assert compile_hint(long_run, RefineConfig(fsdp=True), gpu=True) is None  # compile and fsdp do not go together


def test_a_basis_rate_without_trained_bases_is_refused():
    with pytest.raises(ValueError, match="--lr-bases .* --refine-mode all"):
        RefineConfig(mode="factors", lr_bases=1e-4).validate()
    RefineConfig(mode="all", lr_bases=1e-4).validate()


def test_decay_to_init_pulls_the_trained_tensors_back_towards_their_start(pair, tmp_path):
    """--decay-to-init: after each step every trained tensor moves that share of the way back to its start. All
    the way (1.0) after the only step leaves the model as it started; a share in between keeps it closer to the
    start than no pull does (same data, same seed)."""
    teacher, student = pair
    start = {n: p.detach().clone() for n, p in student.named_parameters() if n.endswith((".v", ".scale"))}

    def distance(share: float, ids: torch.Tensor, name: str) -> float:
        refined = refine(copy.deepcopy(student), teacher, ids,
                         _cfg(tmp_path / name, mode="factors", epochs=1, lr_matrices=1e-2, decay_to_init=share)).model
        now = dict(refined.named_parameters())
        return sum(float((now[n].detach() - p).pow(2).sum()) for n, p in start.items())

    assert distance(1.0, _ids(2, 16), "all") == 0.0  # one step (batch 2), undone entirely
    free, pulled = distance(0.0, _ids(8, 16), "free"), distance(0.3, _ids(8, 16), "pulled")
    assert 0 < pulled < free
    with pytest.raises(ValueError, match="decay_to_init"):
        RefineConfig(decay_to_init=1.5).validate()
