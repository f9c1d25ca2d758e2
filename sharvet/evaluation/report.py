"""``sharvet report``: result JSONs merged into the paper's Table 2 layout, as Markdown.

Rows are method x ratio, the original model first, then one block per compression ratio (the fraction of
parameters removed, ``1 - kept``, as papers quote it: 20%, 30%, ...). Columns are perplexity on C4 and
WikiText-2 (lower is better) and the headline accuracy (see
:data:`sharvet.evaluation.task_catalog.HEADLINE_METRICS`) on COPA, PIQA, ARC-Easy, WinoGrande and LAMBADA,
plus their mean by the one averaging rule of :mod:`sharvet.evaluation.table2` (only when all five were run).
Within each ratio block the best value of a column is bold and the second best underlined; a value that was not
run is "–". Files with the same method and ratio are merged (one may hold perplexities and another the tasks);
a later file's value wins.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sharvet.evaluation import table2
from sharvet.evaluation.results import read_results
from sharvet.evaluation.rows import METRICS, ResultRow, row_from_eval_result
from sharvet.evaluation.task_results import OK


def columns(metric: str = "headline") -> list[table2.Column]:
    """Ratio (parameters removed), method, C4 and WikiText-2 perplexity, the five accuracies and their average."""
    removed = lambda r: "0%" if r.is_original else f"{(1 - r.ratio) * 100:.0f}%"  # noqa: E731
    return [table2.Column("Ratio", removed), table2.Column("Method", lambda r: r.method),
            table2.Column("C4", lambda r: r.ppl("c4"), better="lower"),
            table2.Column("Wiki.", lambda r: r.ppl("wikitext2"), better="lower"),
            *table2.accuracy_columns(short=True, percent=False, digits=2, metric=metric)]


def _merge(row: ResultRow, new: ResultRow, source: str, checked: Sequence[table2.Column]) -> None:
    """``new``'s values into ``row`` (not-run tasks never replace a run one), warning where a shown value changes."""
    for column in checked:
        old, value = column.value(row), column.value(new)
        if old is not None and value is not None and not math.isclose(old, value):
            warnings.warn(f"{source}: {row.method} at ratio {row.ratio} {column.header} {value} replaces {old}",
                          stacklevel=3)
    row.perplexity.update(new.perplexity)
    row.tasks.update({name: e for name, e in new.tasks.items() if e.get("status", OK) == OK})


def merge_rows(results: Iterable[tuple[str, Mapping[str, Any]]], metric: str = "headline") -> list[ResultRow]:
    """Rows keyed by (method, ratio) in order of first appearance; later non-missing values replace earlier."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    checked = [c for c in columns(metric) if c.better is not None and c.header != "Avg"]
    rows: dict[tuple[str, float], ResultRow] = {}
    for source, result in results:
        new = row_from_eval_result(result)
        row = rows.setdefault((new.method, new.ratio), ResultRow(new.method, new.ratio))
        _merge(row, new, source, checked)
    return list(rows.values())


def render_markdown(rows: Sequence[ResultRow], *, metric: str = "headline") -> str:
    """The Markdown table with its caption (what the numbers are, and the averaging rule)."""
    accuracy = ("acc_norm for PQ and ARC, acc for CP, WG and LB" if metric == "headline"
                else f"{metric} (acc where a task has no {metric})" if metric != "acc" else "acc")
    caption = (f"Ratio: parameters removed (1 - kept ratio). C4, Wiki.: perplexity (lower is better). "
               f"CP, PQ, ARC, WG, LB: zero-shot accuracy, {accuracy} (higher is better). Best per ratio in bold, "
               f"second best underlined; {table2.REPORT.not_run}: not run.")
    return table2.render(rows, columns(metric), table2.REPORT, caption) + "\n"


def report(paths: Iterable[str | Path], *, metric: str = "headline") -> str:
    """Markdown table of the result files ``paths``."""
    results = [(str(p), read_results(p)) for p in paths]
    if not results:
        raise ValueError("no result files given")
    return render_markdown(merge_rows(results, metric), metric=metric)


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``sharvet report``."""
    p.add_argument("results", nargs="+", help="result JSON files written by sharvet eval --json")
    p.add_argument("--metric", default="headline", choices=METRICS,
                   help="task accuracy to show: headline (acc_norm for PIQA/ARC, acc otherwise), acc or acc_norm")
    p.add_argument("--output", "-o", default=None, help="write the Markdown table here instead of printing it")


def report_command(a: Any) -> int:
    """``sharvet report`` on parsed arguments: print the table, or write it to ``--output``."""
    text = report(a.results, metric=a.metric)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(text, encoding="utf-8")
        print(f"wrote {a.output}")
    else:
        print(text, end="")
    return 0


__all__ = ["add_report_arguments", "columns", "merge_rows", "render_markdown", "report", "report_command"]
