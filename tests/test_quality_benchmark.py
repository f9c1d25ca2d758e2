"""benchmarks/quality_smollm2.py: the refinement profile lists where the time of a run went; rows are marked
``default`` by what they ran."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sharvet.api import CalibrationSpec
from sharvet.refinement import RefineConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality_smollm2 as quality  # noqa: E402


def test_profile_ranks_operations_by_their_own_time(monkeypatch):
    def work(*_args):  # stands in for a short refinement: many small additions, one large matmul
        x = torch.randn(256, 256)
        for _ in range(50):
            x = x + 1
        return x @ torch.randn(256, 2048)

    monkeypatch.setattr(quality, "_variant_setup", lambda *_args: (None, None, None))  # compression not profiled
    monkeypatch.setattr(quality, "refine", work)
    a = argparse.Namespace(device="cpu", steps=3)
    out = quality._profile(a, None, None, None, None, "16")
    names = [row["name"] for row in out["top"]]
    assert out["variant"] == "16" and out["time"] == "self_cpu_time_total" and out["total_ms"] > 0
    assert "aten::add" in names and "aten::mm" in names
    shares = [row["share"] for row in out["top"]]
    # shares are rounded to 4 decimals: each may be up to 5e-5 over
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 5e-5 * len(shares)
    assert next(row for row in out["top"] if row["name"] == "aten::add")["calls"] >= 50


def test_throughput_variants_cast_what_they_name(monkeypatch, tmp_path):
    """BATCH:bf16 casts student and a copy of the teacher, BATCH:bf16-teacher only the copy, BATCH alone nothing;
    the original teacher is never changed (it scores the rows)."""
    from tiny import tiny_llama

    teacher = argparse.Namespace(model=tiny_llama(2))
    monkeypatch.setattr(quality, "_compressed", lambda *_a: (tiny_llama(2), None, 0.7))
    a = argparse.Namespace(device="cpu", steps=2, out_dir=str(tmp_path))
    dtypes = {}
    for variant in ("8", "8:bf16", "8:bf16-teacher"):
        student, teacher_model, cfg = quality._variant_setup(a, teacher, None, None, variant, "t")
        dtypes[variant] = (next(student.parameters()).dtype, next(teacher_model.parameters()).dtype)
        assert cfg.batch_size == 8 and cfg.max_steps == 2
    assert dtypes == {"8": (torch.float32, torch.float32), "8:bf16": (torch.bfloat16, torch.bfloat16),
                      "8:bf16-teacher": (torch.float32, torch.bfloat16)}
    assert next(teacher.model.parameters()).dtype == torch.float32


def _row(flags: list[str], **changes) -> dict:
    _, keys = quality._default_settings(flags)
    return {"method": quality.DEFAULT_METHOD, "calib_data": quality.method(quality.DEFAULT_METHOD).calibration,
            "train_dtype": "float32", "refine_flags": flags, **keys, **changes}


def test_a_row_is_default_when_it_ran_todays_defaults():
    epochs = RefineConfig().epochs
    assert quality._is_default(_row([]))
    assert quality._is_default(_row(["--epochs", str(epochs)]))  # restates today's default: the same run
    assert not quality._is_default(_row([], epochs=epochs - 1))  # ran an earlier default
    assert not quality._is_default(_row(["--lr-end-factor", "0.05"]))
    assert not quality._is_default(_row([], train_dtype="bfloat16"))
    assert not quality._is_default(_row([], calib_data="wikitext2"))
    assert not quality._is_default(_row([], method="basis-sharing"))
    assert not quality._is_default(_row([], calib_samples=4 * CalibrationSpec.samples))  # more calibration


def test_a_records_calibration_windows_come_from_its_run_when_it_does_not_name_them():
    """Rows of runs before the ninth session do not name their calibration windows: their run's argv does, or the
    default of then; the command shown gives --calib-samples only when it is not today's default."""
    run = {"date": "d", "device": "cpu", "argv": ["quality_smollm2.py", "run", "--calib-samples", "256"]}
    row = {"row": "sharvet-plus@0.7", "ratio": 0.7, "wikitext2_ppl": 1.0, "c4_ppl": 1.0, "adapters_in_budget": True,
           "train_tokens": 1, "realised_ratio": 0.7, "preset": "default", "steps": 1, "tokens_per_s": 1.0,
           "trainable": 1, "loss_weights": {}, **_row([])}
    many = quality._record(row, run)
    assert many["calib_samples"] == 256 and " --calib-samples 256 " in many["command"] and not many["default"]
    plain = quality._record(row, {**run, "argv": ["quality_smollm2.py", "run"]})
    assert plain["calib_samples"] == CalibrationSpec.samples and "--calib-samples" not in plain["command"]
    assert plain["default"]


def test_every_row_of_a_run_trains_the_default_methods_epochs():
    epochs = str(quality.method(quality.DEFAULT_METHOD).refine_epochs)
    assert quality._same_epochs("basis-sharing", []) == ["--epochs", epochs]  # the paper's 2 by its own default
    assert quality._same_epochs("basis-sharing", ["--epochs", "1"]) == []  # a run's flags win
    assert quality._same_epochs(quality.DEFAULT_METHOD, []) == []


def test_the_average_accuracy_has_the_standard_error_of_a_mean_of_the_tasks():
    tasks = {"a": {"headline_metric": "acc", "metrics": {"acc": 0.5, "acc_stderr": 0.03}},
             "b": {"headline_metric": "acc_norm", "metrics": {"acc_norm": 0.6, "acc_norm_stderr": 0.04}}}
    assert quality.avg_acc_stderr(tasks) == 2.5  # 100 * sqrt(0.03^2 + 0.04^2) / 2
    assert quality.avg_acc_stderr(None) is None
    assert quality.avg_acc_stderr({"a": {"headline_metric": "acc", "metrics": {"acc": 0.5}}}) is None
