"""``sharvet report``: result JSONs to the paper's Table 2 layout, against a table written out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharvet.evaluation import table2
from sharvet.evaluation.report import merge_rows, render_markdown as report_text, report
from sharvet.evaluation.rows import row_from_eval_result
from sharvet.evaluation.table2 import average_accuracy, average_stderr
from sharvet.evaluation.results import read_results, write_results
from sharvet.evaluation.task_catalog import HEADLINE_METRICS

NOT_RUN = None


def _result(method: str, ratio: float, ppl: dict[str, float | None] | None = None,
            tasks: dict[str, tuple[float, float] | None] | None = None) -> dict[str, Any]:
    """A result dict as ``sharvet eval`` writes it; tasks map to (acc, acc_norm) (acc_norm ignored if no such
    metric for the task), None meaning "not run"."""
    def task_entry(name: str, values: tuple[float, float] | None) -> dict[str, Any]:
        if values is None:
            return {"name": name, "status": "not run", "reason": f"no local data for {name}"}
        metrics = {"acc": values[0], "acc_stderr": 0.01}
        if HEADLINE_METRICS[name] == "acc_norm":
            metrics |= {"acc_norm": values[1], "acc_norm_stderr": 0.01}
        head = HEADLINE_METRICS[name]
        return {"name": name, "status": "ok", "metrics": metrics, "headline_metric": head, "headline": metrics[head]}

    def ppl_entry(value: float | None) -> dict[str, Any]:
        if value is None:
            return {"status": "not run", "reason": "no 'validation' data for 'c4'"}
        return {"status": "ok", "ppl": value, "n_tokens": 1000, "context": 1024, "stride": 1024}

    return {"format": "sharvet-eval", "format_version": 1, "model": f"/ckpt/{method}-{ratio}", "method": method,
            "ratio": ratio, "perplexity": {k: ppl_entry(v) for k, v in (ppl or {}).items()},
            "tasks": {k: task_entry(k, v) for k, v in (tasks or {}).items()}}


def _tasks(cp: float, pq: tuple[float, float], arc: tuple[float, float], wg: float,
           lb: float | None) -> dict[str, tuple[float, float] | None]:
    return {"copa": (cp, cp), "piqa": pq, "arc_easy": arc, "winogrande": (wg, wg),
            "lambada_openai": None if lb is None else (lb, lb)}


RESULTS = {
    "original.json": _result("original", 1.0, {"c4": 20.5, "wikitext2": 14.25},
                             _tasks(0.78, (0.68, 0.70), (0.65, 0.60), 0.60, 0.45)),
    "sharvet-0.8.json": _result("sharvet", 0.8, {"c4": 25.0, "wikitext2": 18.0},
                                _tasks(0.74, (0.64, 0.66), (0.58, 0.55), 0.58, 0.40)),
    "basis-0.8.json": _result("basis", 0.8, {"c4": 27.0, "wikitext2": 17.5},
                              _tasks(0.70, (0.65, 0.66), (0.56, 0.52), 0.57, 0.38)),
    "svdllm-0.8.json": _result("svd-llm", 0.8, {"c4": NOT_RUN, "wikitext2": 30.0},
                               _tasks(0.66, (0.61, 0.62), (0.54, 0.50), 0.55, None)),
    "sharvet-0.7-ppl.json": _result("sharvet", 0.7, {"c4": 35.0, "wikitext2": 24.0}),
    "basis-0.7.json": _result("basis", 0.7, {"c4": 33.0, "wikitext2": 26.0},
                              _tasks(0.66, (0.60, 0.63), (0.51, 0.48), 0.54, 0.33)),
    "sharvet-0.7-tasks.json": _result("sharvet", 0.7, None, _tasks(0.70, (0.61, 0.63), (0.53, 0.50), 0.56, 0.30)),
}

EXPECTED = """\
| Ratio | Method | C4 | Wiki. | CP | PQ | ARC | WG | LB | Avg |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
| 0% | original | 20.50 | 14.25 | 0.78 | 0.70 | 0.60 | 0.60 | 0.45 | 0.63 |
| 20% | sharvet | **25.00** | <u>18.00</u> | **0.74** | **0.66** | **0.55** | **0.58** | **0.40** | **0.59** |
| 20% | basis | <u>27.00</u> | **17.50** | <u>0.70</u> | **0.66** | <u>0.52</u> | <u>0.57</u> | <u>0.38</u> | <u>0.57</u> |
| 20% | svd-llm | – | 30.00 | 0.66 | <u>0.62</u> | 0.50 | 0.55 | – | – |
| 30% | sharvet | <u>35.00</u> | **24.00** | **0.70** | **0.63** | **0.50** | **0.56** | <u>0.30</u> | **0.54** |
| 30% | basis | **33.00** | <u>26.00</u> | <u>0.66</u> | **0.63** | <u>0.48</u> | <u>0.54</u> | **0.33** | <u>0.53</u> |

Ratio: parameters removed (1 - kept ratio). C4, Wiki.: perplexity (lower is better). CP, PQ, ARC, WG, LB: \
zero-shot accuracy, acc_norm for PQ and ARC, acc for CP, WG and LB (higher is better). Best per ratio in bold, \
second best underlined; –: not run. Avg: the mean of the five tasks' accuracies, only where all five were run.
"""


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [write_results(result, tmp_path / name) for name, result in RESULTS.items()]


def test_report_reproduces_the_known_table(files: list[Path]) -> None:
    assert report(files) == EXPECTED


def test_report_with_plain_accuracy(files: list[Path]) -> None:
    """acc instead of the headline: PIQA and ARC change, the others (no acc_norm) keep acc."""
    lines = report(files, metric="acc").splitlines()
    assert lines[2] == "| 0% | original | 20.50 | 14.25 | 0.78 | 0.68 | 0.65 | 0.60 | 0.45 | 0.63 |"
    with pytest.raises(ValueError, match="metric must be one of"):
        report(files, metric="f1")


def test_average_needs_all_five_tasks() -> None:
    svdllm = row_from_eval_result(RESULTS["svdllm-0.8.json"])
    assert svdllm.accuracy("lambada_openai") is None and svdllm.ppl("c4") is None and svdllm.ppl() == 30.0
    rows = merge_rows([("a", RESULTS["svdllm-0.8.json"]), ("b", RESULTS["original.json"])])
    assert average_accuracy(rows[0]) is None and average_accuracy(rows[1]) == pytest.approx(0.626)
    assert average_stderr(rows[0]) is None and average_stderr(rows[1]) == pytest.approx(0.01 / 5 ** 0.5)


def test_study_and_report_share_the_averaging_rule() -> None:
    """The study's Table 2 and the report render through one renderer, whose caption states the rule."""
    rows = merge_rows([("a", RESULTS["svdllm-0.8.json"]), ("b", RESULTS["original.json"])])
    study = table2.render(rows, table2.accuracy_columns(short=False, percent=True, digits=1), table2.STUDY)
    assert study.splitlines()[2:4] == ["| 78.0 | 70.0 | 60.0 | 60.0 | 45.0 | 62.6 |",  # the original first
                                       "| 66.0 | 62.0 | 50.0 | 55.0 | n/a | n/a |"]
    assert study.endswith(table2.AVERAGE_RULE + ".") and table2.AVERAGE_RULE in report_text(rows)


def test_merge_warns_when_a_value_is_replaced() -> None:
    changed = json.loads(json.dumps(RESULTS["original.json"]))
    changed["perplexity"]["wikitext2"]["ppl"] = 15.0
    with pytest.warns(UserWarning, match="Wiki. 15.0 replaces 14.25"):
        rows = merge_rows([("a", RESULTS["original.json"]), ("b", changed)])
    assert len(rows) == 1 and rows[0].ppl("wikitext2") == 15.0


def test_report_reads_the_older_perplexity_only_json(tmp_path: Path) -> None:
    """``sharvet eval`` wrote {model, sharvet, perplexity: {name: {ppl, ...}}} before tasks existed."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": "m", "sharvet": None, "perplexity": {"wikitext2": {"ppl": 21.0}}}))
    assert "| 0% | original | – | 21.00 | – | – | – | – | – | – |" in report([old])


def test_bad_result_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="result file not found"):
        read_results(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a sharvet eval result"):
        read_results(tmp_path / "x.json")
    with pytest.raises(ValueError, match="no result files"):
        report([])


def test_report_command_writes_markdown(files: list[Path], tmp_path: Path) -> None:
    import argparse

    from sharvet.evaluation.report import add_report_arguments, report_command

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    out = tmp_path / "docs" / "table.md"
    assert report_command(parser.parse_args([*map(str, files), "--output", str(out)])) == 0
    assert out.read_text() == EXPECTED


def test_model_record_reads_the_checkpoint_plan() -> None:
    """Method, ratio and realised parameter counts come from config.sharvet; originals are 'original' at 1.0."""
    from sharvet.evaluation.results import model_record
    from sharvet.loading import LoadedModel
    from tiny import tiny_llama

    model = tiny_llama(layers=2)
    original = model_record(LoadedModel(model, None, "tiny"))
    assert (original["method"], original["ratio"]) == ("original", 1.0)
    assert original["parameters"] == {"counted": sum(p.numel() for p in model.parameters())}
    report_dict = {"linear_original": 100, "linear_compressed": 80, "model_original": 200, "model_compressed": 180,
                   "target_ratio": 0.8, "linear_ratio": 0.8, "model_ratio": 0.9}
    model.config.sharvet = {"format_version": 1, "method": "sharvet", "ratio": 0.8, "groups": [],
                            "settings": {"parameters": report_dict, "model_id": "base"}}
    record = model_record(LoadedModel(model, None, "ckpt"))
    assert (record["method"], record["ratio"]) == ("sharvet", 0.8)
    assert record["parameters"] == {"counted": original["parameters"]["counted"], **report_dict}
    assert record["compression_settings"] == {"model_id": "base"} and record["dtype"] == "float32"
