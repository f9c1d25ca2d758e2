"""The study renderer (sharvet.study): learning-rate selection, tables, claim verdicts, Figure 3, the docs splice
and the stage runner, on result files in the study's older JSON shape and in the experiment schema."""
from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from sharvet.evaluation.rows import ResultRow, read_run, write_run as write_record
from sharvet.study import document, stages
from sharvet.study import tables as study_tables

FIVE = ("copa", "piqa", "arc_easy", "winogrande", "lambada_openai")


def piqa(acc: float, tasks: tuple[str, ...] = ("piqa",)) -> dict:
    """Task entries: ``acc`` on ``tasks`` (standard error 0.01), COPA not run unless listed."""
    out = {"copa": {"status": "not run", "reason": "no data"}}
    return out | {t: {"status": "ok", "headline": acc, "headline_metric": "acc_norm",
                      "metrics": {"acc_norm": acc, "acc_norm_stderr": 0.01}} for t in tasks}


def row(method: str, ppl: float, acc: float, variants: tuple[str, ...] = (), tag: str = "lr1e-3", ratio=0.5):
    name = method + "".join(f"-{v}" for v in variants)
    return {"row": name, "method": method, "variants": list(variants), "ratio": ratio, "realised_ratio": ratio,
            "ppl_untuned": 10 * ppl, "ppl_tuned": ppl, "trainable": 100, "tasks": piqa(acc),
            "history": f"/remote/out/runs-{tag}/r{ratio:g}-{name}/history.jsonl"}


def write_run(folder: Path, name: str, lr: float, rows: list[dict]) -> None:
    args = {"lr": lr, "train_samples": 4, "seq_len": 8, "epochs": 2, "batch_size": 2, "calib_samples": 2,
            "lora_rank": 8}
    doc = {"device": "test GPU", "eval_tokens": 1000, "original_ppl": 20.0, "original_tasks": piqa(0.64),
           "args": args, "rows": rows}
    (folder / f"{name}.json").write_text(json.dumps(doc))
    (folder / f"{name}.run.json").write_text(json.dumps({"command": f"run {name}", "date": "2026-11-23",
                                                          "wall_s": 1.0, "gpu": "test GPU"}))


def write_history(folder: Path, row_: dict, lm: float) -> None:
    path = folder.joinpath(*Path(row_["history"]).parts[-3:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps({"step": s, "lm": lm + 1 / s}) for s in range(1, 11)))


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    write_run(res, "methods-lr1e-4", 1e-4, [row("basis-sharing", 50.0, 0.52, tag="lr1e-4"),
                                             row("sharvet", 90.0, 0.50, tag="lr1e-4")])
    best_bs, best_sv = row("basis-sharing", 60.0, 0.53), row("sharvet", 80.0, 0.51)
    write_run(res, "methods-lr1e-3", 1e-3, [best_bs, best_sv])
    lora = row("sharvet", 70.0, 0.52, ("LoRA",))
    write_run(res, "sharvet-lora", 1e-3, [lora])
    write_run(res, "variants", 1e-3, [row("sharvet", 80.4, 0.5, ("C",)), row("sharvet", 200.0, 0.5, ("K",))])
    for r, lm in ((best_sv, 5.0), (lora, 4.0), (best_bs, 4.5)):
        write_history(res, r, lm)
    return res


def test_best_rows_pick_the_lowest_tuned_perplexity_of_the_search(results):
    best = study_tables.best_rows(study_tables.rows_of(study_tables.load_runs(results, "methods-lr")))
    assert best[(0.5, "basis-sharing")].lr == 1e-4 and best[(0.5, "sharvet")].lr == 1e-3


def test_render_tables_claims_and_figure(results, tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    text = document.render_study(results, figures, tmp_path, tmp_path / "missing.md")
    assert "| 0.5 | Basis Sharing + LoRA | 0.0001 | 0.5000 | 100 | 50.00 | n/a | n/a | 52.0 |" in text
    assert "| 1.0 | Original | - | 1.0 | - | 20.00 |" in text
    assert "WikiText-2: SharVeT ahead of every baseline - **does not hold** (SharVeT 80.0" in text
    assert "better than C (without cosine) - **within run-to-run noise**" in text
    assert "better than K (without CKA) - **holds** (80.0 vs 200.0)" in text
    assert "vectors reach a lower LM loss than LoRA at equal steps - **does not hold**" in text
    assert "average accuracy" not in text and "Avg: the mean of the five tasks' accuracies" in text  # PIQA only
    assert (figures / "figure3_loss_r0.5.png").stat().st_size > 1000
    assert "| methods-lr1e-3 | test GPU | 2026-11-23 | 1 | `run methods-lr1e-3` |" in text


def test_c4_column_fills_when_the_runs_scored_it(results, tmp_path):
    run_file = results / "methods-lr1e-3.json"
    run = json.loads(run_file.read_text())
    run["extra_ppl_tokens"], run["original_extra_ppl"] = {"c4": 2048}, {"c4": 30.0}
    run["rows"][0]["extra_ppl"], run["rows"][1]["extra_ppl"] = {"c4": 90.0}, {"c4": 85.0}
    run_file.write_text(json.dumps(run))
    lr4_file = results / "methods-lr1e-4.json"  # basis sharing's best row (lr 1e-4) is the one Table 2 shows
    lr4 = json.loads(lr4_file.read_text())
    lr4["rows"][0]["extra_ppl"] = {"c4": 88.0}
    lr4_file.write_text(json.dumps(lr4))
    text = document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md")
    assert "| 1.0 | Original | - | 1.0 | - | 20.00 | 30.00 |" in text
    assert "| 0.5 | Basis Sharing + LoRA | 0.0001 | 0.5000 | 100 | 50.00 | 88.00 | n/a | 52.0 |" in text
    assert "C4: SharVeT ahead of every baseline - **holds** (SharVeT 85.0, best baseline Basis Sharing + LoRA 88.0)" \
        in text
    assert "\nCOPA, ARC-E, WG, LAMBADA: **n/a = not run**" in text


def test_render_replaces_only_the_study_section(results, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept above\n\n<!-- study:begin -->\nstale text\n<!-- study:end -->\n\nkept below\n")
    figures = tmp_path / "figures"
    figures.mkdir()
    document.splice(doc, document.render_study(results, figures, tmp_path, tmp_path / "missing.md"))
    text = doc.read_text()
    assert "kept above" in text and "kept below" in text and "stale text" not in text
    assert text.count("<!-- study:begin -->") == 1 and "### Table 2" in text


def test_stage_commands_name_every_stage_and_split_by_tag():
    a = Namespace(results_dir="R", figures_dir="F", model=None, data_dir="D", device="cuda", tasks="default",
                  train_samples=256, lrs="1e-4,1e-3", ratios="0.7", variants_lr="1e-3", variant_rows="sharvet:R",
                  tag="-x", table2_rows="seq,sharvet", runs_dir=None, task_batch_size=32, skip_original_tasks=False,
                  shared_data="S", probe_lrs="1e-2")
    cmds = stages.stage_commands(a, Path("methods.py"))
    assert list(cmds) == ["data", "methods-lr1e-4", "methods-lr1e-3", "lr-probe-1e-2", "variants", "sharvet-lora",
                          "sharvet-matched", "grouping", "similarity"]
    probe = cmds["lr-probe-1e-2"]
    assert probe[probe.index("--tasks") + 1] == "" and probe[-1] == "R/lr-probe-1e-2-x.json"
    assert cmds["data"][-5:] == ["fetch-data", "--out", "D", "--base", "S"]
    assert cmds["methods-lr1e-3"][-1] == "R/methods-lr1e-3-x.json" and "0.7" in cmds["methods-lr1e-3"]
    methods = cmds["methods-lr1e-3"]
    assert methods[methods.index("--rows") + 1] == "seq,sharvet" and "--skip-original-tasks" not in methods
    assert methods[methods.index("--out-dir") + 1] == "R/runs-lr1e-3"


def test_split_stage_runs_elsewhere_and_skips_the_original():
    a = Namespace(results_dir="R", figures_dir="F", model=None, data_dir="D", device="cuda", tasks="default",
                  train_samples=256, lrs="1e-3", ratios="0.5", variants_lr="1e-3", variant_rows="sharvet:R",
                  tag="-b", table2_rows="fips", runs_dir="/tmp/runs", task_batch_size=128, skip_original_tasks=True,
                  shared_data="S", probe_lrs="")
    for stage, cmd in stages.stage_commands(a, Path("methods.py")).items():
        if "--out-dir" in cmd:
            assert cmd[cmd.index("--out-dir") + 1].startswith("/tmp/runs/"), stage
            assert "--skip-original-tasks" in cmd and cmd[cmd.index("--task-batch-size") + 1] == "128"


def test_original_row_comes_from_the_run_that_scored_it():
    runs = [Namespace(original=ResultRow("original", 1.0, tasks=tasks)) for tasks in ({}, piqa(0.6), piqa(0.5))]
    assert study_tables.original_run(runs) is runs[1]


def test_average_stderr_combines_the_five_tasks():
    tasks = {**piqa(0.5, FIVE), "copa": {"status": "ok", "headline": 0.5, "headline_metric": "acc",
                                         "metrics": {"acc": 0.5, "acc_stderr": 0.02}}}
    assert study_tables.stderr(ResultRow("m", 0.5, tasks=tasks)) == pytest.approx((4 * 1.0 + 4.0) ** 0.5 / 5)
    assert study_tables.stderr(ResultRow("m", 0.5, tasks=piqa(0.5, FIVE[1:]))) is None  # COPA not run


def test_accuracy_cells_add_the_average_only_for_several_tasks():
    row = ResultRow("m", 0.5, tasks={**piqa(0.5, FIVE), "copa": {"status": "ok", "headline": 1.0,
                                                                 "headline_metric": "acc", "metrics": {"acc": 1.0, "acc_stderr": 0.02}}})
    assert study_tables.accuracy_cells(row, ["piqa"]) == ["50.0"]
    assert study_tables.accuracy_header(["piqa"]) == ["PIQA ↑"]
    assert study_tables.accuracy_cells(row, ["piqa", "copa"]) == ["50.0", "100.0", "60.0 ± 0.6"]  # the five's mean
    assert study_tables.accuracy_cells(ResultRow("m", 0.5, tasks=piqa(0.5)), ["piqa", "copa"])[-1] == "n/a"


def test_average_accuracy_claim_needs_the_five_tasks(results, tmp_path):
    for name in ("methods-lr1e-4", "methods-lr1e-3"):
        path = results / f"{name}.json"
        run = json.loads(path.read_text())
        for r in run["rows"]:
            r["tasks"] = piqa(r["tasks"]["piqa"]["headline"], FIVE)
        path.write_text(json.dumps(run))
    text = document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md")
    claim = "average accuracy (COPA+PIQA+ARC-E+WG+LAMBADA): SharVeT ahead - "
    assert f"{claim}**does not hold** (SharVeT 51.0, best baseline Basis Sharing + LoRA 52.0)" in text  # 2 SE = 0.9
    for name in ("methods-lr1e-4", "methods-lr1e-3"):  # twice the standard errors: 51 vs 52 is within 2 x 0.9
        path = results / f"{name}.json"
        path.write_text(path.read_text().replace('"acc_norm_stderr": 0.01', '"acc_norm_stderr": 0.02'))
    text = document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md")
    assert f"{claim}**within two standard errors** (±0.9 each) (SharVeT 51.0" in text


def test_jobs_run_data_first_then_stages_side_by_side(tmp_path):
    marker = tmp_path / "data-done"
    write = [sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).touch()"]
    check = [sys.executable, "-c",
             f"import pathlib, sys; print('ok'); sys.exit(not pathlib.Path({str(marker)!r}).exists())"]
    a = Namespace(stages="all", results_dir=str(tmp_path / "res"), figures_dir=str(tmp_path / "fig"), tag="-t", jobs=2)
    stages.run(a, {"data": write, "one": check, "two": check})
    records = {n: json.loads((tmp_path / "res" / f"{n}-t.run.json").read_text()) for n in ("data", "one", "two")}
    assert all(r["returncode"] == 0 for r in records.values())
    assert "note" not in records["data"] and "2 stages at a time" in records["one"]["note"]
    assert (tmp_path / "res" / "two-t.log").read_text().strip() == "ok"


def test_a_failed_stage_among_jobs_fails_the_run(tmp_path):
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    a = Namespace(stages="all", results_dir=str(tmp_path), figures_dir=str(tmp_path), tag="", jobs=2)
    with pytest.raises(SystemExit, match="stage one failed with exit code 3"):
        stages.run(a, {"one": fail, "two": [sys.executable, "-c", ""]})
    assert json.loads((tmp_path / "two.run.json").read_text())["returncode"] == 0


def test_probe_columns_and_claim_stay_out_of_table2(results, tmp_path):
    write_run(results, "lr-probe-1e-2", 1e-2, [row("basis-sharing", 400.0, 0.5, tag="lr1e-2"),
                                               row("sharvet", 45.0, 0.5, tag="lr1e-2")])
    text = document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md")
    assert "| 0.5 | SharVeT | 90.00 | 80.00 | **45.00** |" in text and "ppl, lr 0.01 (probe)" in text
    assert "| 0.5 | SharVeT | 0.001 |" in text  # Table 2 keeps the search's best row
    assert ("learning rate searched up to 0.01 (probe): SharVeT ahead of every baseline - **holds** (SharVeT 45.0 "
            "at lr 0.01, best baseline Basis Sharing + LoRA 50.0 at lr 0.0001)") in text


def test_runs_in_the_experiment_schema_render_like_the_older_json(results, tmp_path):
    """A run rewritten in the experiment schema (write_run) renders the same section as the study's older JSON."""
    before = document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md")
    for path in sorted(p for p in results.glob("*.json") if not p.name.endswith(".run.json")):
        write_record(read_run(path), path)
        assert json.loads(path.read_text())["format"] == "sharvet-experiment"
    assert document.render_study(results, tmp_path, tmp_path, tmp_path / "missing.md") == before
