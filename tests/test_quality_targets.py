"""benchmarks/quality_targets.py: issue 15's targets from summary records, like for like."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality_targets as targets  # noqa: E402


def record(method: str, ratio: float, wiki: float, c4: float, flags: str = "", default: bool = False,
           calib: str = "wikitext2+c4", acc: float | None = None, epochs: int = 2) -> dict:
    return {"method": method, "ratio": ratio, "wikitext2_ppl": wiki, "c4_ppl": c4, "avg_acc": acc, "default": default,
            "calib_data": calib, "train_dtype": "float32", "epochs": epochs, "train_tokens": 1000 * epochs,
            "train_data": "wikitext2+c4",
            "command": f"sharvet compress --ratio {ratio} --refine{' ' + flags if flags else ''} --device cuda -o OUT"}


RECORDS = [
    {"method": "original", "ratio": 1.0, "wikitext2_ppl": 20.0, "c4_ppl": 30.0, "command": "sharvet eval"},
    record("sharvet-plus", 0.7, 30.0, 56.0, default=True, acc=43.0),
    record("sharvet-plus", 0.7, 32.0, 52.0, default=True),  # means 31 / 54: 1.55x / 1.8x
    record("basis-sharing", 0.7, 35.0, 59.0, acc=44.0),       # 11.4 % / 8.5 % lower; accuracy behind
    record("basis-sharing", 0.7, 20.0, 20.0, calib="wikitext2"),  # other calibration: not comparable
    record("basis-sharing", 0.7, 20.0, 20.0, flags="--epochs 4", epochs=4),  # other steps: not comparable
    record("sharvet-plus", 0.7, 10.0, 10.0, flags="--epochs 4", epochs=4),
    record("svd", 0.7, 20.0, 20.0, flags="--epochs 4 --lr 1e-3", epochs=4),  # another flag: not comparable
]


def test_defaults_are_checked_against_like_for_like_baselines():
    text, checked, met = targets.tables(RECORDS, "")
    assert "31.00 (mean of 2)" in text and "| 1.55 | 1.6 | yes |" in text and "| 1.80 | 1.8 | yes |" in text
    assert "11.4 %" in text and "8.5 %" in text and "behind by 1.0" in text
    assert (checked, met) == (2 + 2 + 1, 2 + 1)  # limits, margins against one baseline, accuracy


def test_a_candidate_is_compared_with_baselines_run_with_its_flags():
    text, checked, met = targets.tables(RECORDS, "--epochs 4")
    assert "| 0.7 | WikiText-2 | Basis Sharing + LoRA | 10.00 | 20.00 | 50.0 % | yes |" in text
    assert checked == met == 2 + 2


def test_a_default_that_changed_is_compared_by_what_ran_not_by_its_flags():
    """Once four epochs are the default, a default row without flags matches baselines run with --epochs 4."""
    records = [RECORDS[0], record("sharvet-plus", 0.7, 10.0, 10.0, default=True, epochs=4),
               record("basis-sharing", 0.7, 20.0, 20.0, flags="--epochs 4", epochs=4),
               record("basis-sharing", 0.7, 11.0, 11.0)]  # the old two epochs: not comparable
    text, checked, met = targets.tables(records, "")
    assert "| 10.00 | 20.00 | 50.0 % | yes |" in text and "11.00" not in text
    assert checked == met == 2 + 2


def test_a_calibration_is_compared_with_baselines_calibrated_alike():
    """--calib-samples N checks the default method's rows calibrated on N windows against baselines calibrated
    alike; rows that do not name their windows ran the default of then (64)."""
    records = [RECORDS[0], record("sharvet-plus", 0.7, 10.0, 10.0) | {"calib_samples": 256},
               record("basis-sharing", 0.7, 20.0, 20.0) | {"calib_samples": 256},
               record("basis-sharing", 0.7, 11.0, 11.0)]  # 64 windows: not comparable
    text, checked, met = targets.tables(records, "", 256)
    assert "| 10.00 | 20.00 | 50.0 % | yes |" in text and "11.00" not in text
    assert checked == met == 2 + 2
    assert targets.tables(records, "")[1] == 0  # none of them is a default row


def test_an_accuracy_shortfall_is_given_with_both_standard_errors():
    """Across runs: from the runs' spread (43.0 and 43.4 against 43.5 and 44.3: sqrt(0.08 / 2 + 0.32 / 2) = 0.45).
    Of one run's questions: from lm-eval's errors, not divided by the runs (sqrt(1.0^2 + 1.2^2) = 1.6)."""
    ours = [record("sharvet-plus", 0.7, 10.0, 10.0, default=True, acc=a) | {"avg_acc_stderr": 1.0} for a in (43.0, 43.4)]
    theirs = [record("svd", 0.7, 20.0, 20.0, acc=a) | {"avg_acc_stderr": 1.2} for a in (43.5, 44.3)]
    text, _, _ = targets.tables([RECORDS[0], *ours, *theirs], "")
    assert "behind by 0.70; SE across runs 0.45; SE of one run's questions 1.6" in text
    assert targets.runs_stderr(ours, theirs[:1]) is None  # one run: no spread
    assert targets.questions_stderr(ours, [record("svd", 0.7, 1.0, 1.0, acc=1.0)]) is None  # one side lacks it
    assert targets.paired_stderr(ours, theirs) is None  # no per-question outcomes logged


def test_the_paired_error_compares_the_same_questions():
    """Two tasks of four questions. Task a: ours right on q0-q1 in both runs, theirs on q0 and, in one run, q1:
    differences 0, 0.5, 0, 0 (variance 1/16, over 4 questions). Task b: the same answers on both sides (variance 0).
    SE = 100 * sqrt(1/64) / 2 = 6.25 points."""
    mine = {"a": "1100", "b": "1010"}
    ours = [record("sharvet-plus", 0.7, 10.0, 10.0, default=True, acc=50.0) | {"task_correct": mine}] * 2
    theirs = [record("svd", 0.7, 20.0, 20.0, acc=a) | {"task_correct": {"a": c, "b": "1010"}}
              for a, c in ((50.0, "1100"), (37.5, "1000"))]
    assert targets.paired_stderr(ours, theirs) == pytest.approx(6.25)
    assert targets.paired_stderr(ours, theirs[:1] + [theirs[1] | {"task_correct": {"a": "1000"}}]) is None
    assert targets.paired_stderr(ours, [theirs[0] | {"task_correct": {"a": "110", "b": "101"}}]) is None
    assert "paired SE of the questions 6.25" in targets.shortfall(theirs, ours, 6.25)


def test_runs_that_predate_the_logging_leave_a_paired_comparison_of_the_logged_ones():
    """Both sides mix runs with and without per-question outcomes: the paired error of all runs cannot be had, so
    the shortfall adds the logged runs' own comparison (50.0 against 43.75: ahead by 6.25; SE as above)."""
    mine = {"a": "1100", "b": "1010"}
    ours = [record("sharvet-plus", 0.7, 10.0, 10.0, default=True, acc=50.0) | {"task_correct": mine},
            record("sharvet-plus", 0.7, 10.0, 10.0, default=True, acc=40.0)]
    theirs = [record("svd", 0.7, 20.0, 20.0, acc=a) | {"task_correct": {"a": c, "b": "1010"}}
              for a, c in ((50.0, "1100"), (37.5, "1000"))] + [record("svd", 0.7, 20.0, 20.0, acc=60.0)]
    text = targets.shortfall(ours, theirs, 4.1)
    assert "paired SE of the questions" not in text
    assert text.endswith("of the runs that logged their questions (1 and 2): ahead by 6.25, paired SE 6.25")
    assert targets.logged_comparison(ours[1:], theirs) == ""  # our logged run removed: nothing to pair


def test_the_targets_figure_shows_the_compared_runs(tmp_path, monkeypatch):
    """--plot: one panel per ratio and measure, holding exactly the runs the tables compare (the default's two and
    the one comparable baseline run at 0.7), with the target's line."""
    drawn: list[tuple[float, list[float]]] = []
    monkeypatch.setattr(targets, "_column", lambda ax, x, values, color: drawn.append((x, values)))
    path = targets.targets_figure(RECORDS, "", None, tmp_path / "targets.png")
    assert path.stat().st_size > 0
    assert drawn == [(0, [30.0, 32.0]), (1, [35.0]), (0, [56.0, 52.0]), (1, [59.0]), (0, [43.0]), (1, [44.0])]
