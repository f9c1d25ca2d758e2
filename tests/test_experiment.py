"""sharvet.experiment: compress -> refine -> evaluate in memory, one result row per method, variants and ratio."""
from __future__ import annotations

import json

import pytest
import torch

from sharvet.calibration import collect_stats
from sharvet.evaluation.rows import ResultRow, RunRecord, read_run, write_run
from sharvet.experiment import RowSpec, Scoring, refine_config_for, run_row
from sharvet.models import adapter_for
from sharvet.refinement import RefineConfig
from tiny import tiny_llama, tokens


@pytest.fixture(scope="module")
def setup():
    teacher = tiny_llama(layers=4)
    ids = tokens(8, 32)
    stats = collect_stats(adapter_for(teacher), ids, progress=False)
    scoring = Scoring({"wikitext2": tokens(1, 64, seed=1).flatten(), "c4": tokens(1, 64, seed=2).flatten()},
                      device="cpu", context=32, batch_size=2)
    return teacher, ids, stats, scoring


def base(tmp_path, name: str) -> RefineConfig:
    return RefineConfig(lr=1e-2, epochs=1, batch_size=4, seed=0, progress=False, cpu=True,
                        output_dir=str(tmp_path / name))


def test_variants_map_onto_the_refinement_config(tmp_path):
    cfg = base(tmp_path, "x")
    assert refine_config_for(RowSpec("sharvet", 0.5), cfg).mode == "both"
    assert refine_config_for(RowSpec("basis-sharing", 0.5), cfg).mode == "lora"
    assert refine_config_for(RowSpec.parse("sharvet:LoRA", 0.5), cfg).mode == "lora"
    lm = refine_config_for(RowSpec.parse("sharvet:L+M", 0.5), cfg)
    assert lm.lm_only and lm.match_loss_scales and lm.lr == 1e-2 and lm.output_dir == cfg.output_dir
    assert refine_config_for(RowSpec.parse("sharvet:T", 0.5), cfg) is None
    assert RowSpec.parse("sharvet:R+I", 0.7) == RowSpec("sharvet", 0.7, ("R", "I"))


@pytest.mark.parametrize("row_text", ["sharvet", "seq"])
def test_refined_row_measures_the_final_model(setup, tmp_path, row_text):
    teacher, ids, stats, scoring = setup
    before = [p.clone() for p in teacher.parameters()]
    row = run_row(RowSpec.parse(row_text, 0.5), teacher, stats, scoring, calibration_ids=ids, train_ids=ids,
                  refine_base=base(tmp_path, row_text), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the teacher is copied, not changed
    assert row.refined and row.refine_mode == ("both" if row_text == "sharvet" else "lora")
    assert set(row.perplexity) == {"wikitext2", "c4"} and set(row.perplexity_untuned) == {"wikitext2"}
    assert row.ppl() != row.untuned_ppl() and row.steps == 2 and row.trainable > 0
    assert abs(row.realised_ratio - 0.5) < 0.05 and (tmp_path / row_text / "history.jsonl").exists()
    assert row.history == f"{tmp_path / row_text}/history.jsonl"


def test_trainable_counts_what_trained(setup, tmp_path):
    """Sigma trains as a relative delta that is folded back after training: it must still be counted."""
    teacher, ids, stats, scoring = setup
    rows = {v: run_row(RowSpec.parse(f"sharvet:{v}", 0.5), teacher, stats, scoring, calibration_ids=ids,
                       train_ids=ids, refine_base=base(tmp_path, v), device="cpu") for v in ("lambda", "sigma")}
    both = run_row(RowSpec("sharvet", 0.5), teacher, stats, scoring, calibration_ids=ids, train_ids=ids,
                   refine_base=base(tmp_path, "both"), device="cpu")
    assert rows["sigma"].trainable > 0 and both.trainable == rows["lambda"].trainable + rows["sigma"].trainable


def test_unrefined_rows_and_their_round_trip(setup, tmp_path):
    teacher, ids, stats, scoring = setup
    t_row = run_row(RowSpec.parse("sharvet:T", 0.5), teacher, stats, scoring, calibration_ids=ids, train_ids=ids,
                    refine_base=base(tmp_path, "t"), device="cpu")
    plain = run_row(RowSpec("sharvet", 0.5), teacher, stats, scoring, calibration_ids=ids, device="cpu")
    for row in (t_row, plain):
        assert not row.refined and row.refine_mode is None and row.untuned_ppl() == row.ppl()
    assert t_row.ppl() == plain.ppl() and "c4" in t_row.perplexity
    run = RunRecord([t_row, plain], scoring.original(teacher), settings={"lr": 1e-2}, ppl_tokens={"c4": 64})
    back = read_run(write_run(run, tmp_path / "run.json"))
    assert back == run and json.loads((tmp_path / "run.json").read_text())["format"] == "sharvet-experiment"


def test_row_fields_are_checked_on_reading():
    with pytest.raises(ValueError, match="unknown result-row fields"):
        ResultRow.from_dict({"method": "sharvet", "ratio": 0.5, "ppl_tuned": 3.0})
