"""``sharvet report``: result JSONs merged into the paper's Table 2 layout, as Markdown.

Rows are method x ratio, the original model first, then one block per compression ratio (the fraction of
parameters removed, ``1 - kept``, as papers quote it: 20%, 30%, ...). Columns are perplexity on C4 and
WikiText-2 (lower is better) and the headline accuracy (see :data:`sharvet.evaluation.task_catalog.HEADLINE_METRICS`)
on COPA, PIQA, ARC-Easy, WinoGrande and LAMBADA, plus their mean (only when all five were run, so that an
average over fewer tasks is never compared with a full one). Within each ratio block the best value of a column
is bold and the second best underlined; a value that was not run is "–". Files with the same method and ratio
are merged (one may hold perplexities and another the tasks); a later file's value wins.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharvet.evaluation.results import read_results
from sharvet.evaluation.task_catalog import PAPER_TASKS
from sharvet.evaluation.task_results import OK

#: (header, section of the result JSON, name in it)
COLUMNS = (("C4", "perplexity", "c4"), ("Wiki.", "perplexity", "wikitext2"), ("CP", "tasks", "copa"),
           ("PQ", "tasks", "piqa"), ("ARC", "tasks", "arc_easy"), ("WG", "tasks", "winogrande"),
           ("LB", "tasks", "lambada_openai"))
AVG = "Avg"
LOWER_IS_BETTER = {"C4", "Wiki."}
NOT_RUN_CELL = "–"
METRICS = ("headline", "acc", "acc_norm")


@dataclass
class Row:
    """One method at one ratio, with a value (or None) per column."""

    method: str
    ratio: float  # kept fraction, as stored by sharvet (1.0 for the original model)
    values: dict[str, float | None] = field(default_factory=dict)

    @property
    def is_original(self) -> bool:
        return self.ratio >= 1.0 or self.method == "original"


def _ppl_value(entry: Mapping[str, Any] | None) -> float | None:
    if not entry or entry.get("status", OK) != OK or not isinstance(entry.get("ppl"), (int, float)):
        return None
    return float(entry["ppl"])


def _task_value(entry: Mapping[str, Any] | None, metric: str) -> float | None:
    """The task's headline value, or ``metric`` (falling back to acc for tasks that have no acc_norm)."""
    if not entry or entry.get("status", OK) != OK:
        return None
    if metric == "headline":
        value = entry.get("headline")
    else:
        metrics = entry.get("metrics", {})
        value = metrics.get(metric) if metrics.get(metric) is not None else metrics.get("acc")
    return float(value) if isinstance(value, (int, float)) else None


def row_values(result: Mapping[str, Any], metric: str = "headline") -> dict[str, float | None]:
    """Column values of one result dict, Avg included when all five tasks are present."""
    values: dict[str, float | None] = {}
    for header, section, name in COLUMNS:
        entry = (result.get(section) or {}).get(name)
        values[header] = _ppl_value(entry) if section == "perplexity" else _task_value(entry, metric)
    return values


def _with_average(values: dict[str, float | None]) -> dict[str, float | None]:
    tasks = [values.get(h) for h, section, _ in COLUMNS if section == "tasks"]
    return {**values, AVG: sum(tasks) / len(tasks) if all(v is not None for v in tasks) else None}


def _method_and_ratio(result: Mapping[str, Any]) -> tuple[str, float]:
    """From the result, or from the plan the older ``sharvet eval`` JSON stored under ``sharvet``."""
    plan = result.get("sharvet") or {}
    method = result.get("method") or plan.get("method") or "original"
    ratio = result.get("ratio") if result.get("ratio") is not None else plan.get("ratio", 1.0)
    return str(method), round(float(ratio), 4)


def merge_rows(results: Iterable[tuple[str, Mapping[str, Any]]], metric: str = "headline") -> list[Row]:
    """Rows keyed by (method, ratio) in order of first appearance; later non-missing values replace earlier."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    rows: dict[tuple[str, float], Row] = {}
    for source, result in results:
        method, ratio = _method_and_ratio(result)
        row = rows.setdefault((method, ratio), Row(method, ratio))
        for header, value in row_values(result, metric).items():
            if value is None:
                continue
            old = row.values.get(header)
            if old is not None and not math.isclose(old, value):
                warnings.warn(f"{source}: {method} at ratio {ratio} {header} {value} replaces {old}", stacklevel=2)
            row.values[header] = value
    for row in rows.values():
        row.values = _with_average(row.values)
    return list(rows.values())


def blocks(rows: Sequence[Row]) -> list[list[Row]]:
    """The original model(s) first, then one block per ratio, least compressed first."""
    original = [r for r in rows if r.is_original]
    ratios = sorted({r.ratio for r in rows if not r.is_original}, reverse=True)
    compressed = [[r for r in rows if not r.is_original and r.ratio == ratio] for ratio in ratios]
    return [b for b in [original, *compressed] if b]


def _format(value: float | None, digits: int) -> str:
    return NOT_RUN_CELL if value is None else f"{value:.{digits}f}"


def _marks(cells: list[str], lower_is_better: bool) -> list[str]:
    """Cells with the best shown value bold and the second best underlined (ties share a mark)."""
    shown = sorted({float(c) for c in cells if c != NOT_RUN_CELL}, reverse=not lower_is_better)
    if len([c for c in cells if c != NOT_RUN_CELL]) < 2:
        return cells
    best, second = shown[0], shown[1] if len(shown) > 1 else None
    out = []
    for cell in cells:
        value = None if cell == NOT_RUN_CELL else float(cell)
        out.append(f"**{cell}**" if value == best else f"<u>{cell}</u>" if value == second else cell)
    return out


def _ratio_label(row: Row) -> str:
    return "0%" if row.is_original else f"{(1 - row.ratio) * 100:.0f}%"


def render_markdown(rows: Sequence[Row], *, ppl_digits: int = 2, acc_digits: int = 2,
                    metric: str = "headline") -> str:
    """The Markdown table (with a note saying what the numbers are)."""
    headers = [h for h, _, _ in COLUMNS] + [AVG]
    lines = ["| Ratio | Method | " + " | ".join(headers) + " |", "|---|---|" + "---:|" * len(headers)]
    for block in blocks(rows):
        columns = []
        for header in headers:
            digits = ppl_digits if header in LOWER_IS_BETTER else acc_digits
            cells = [_format(row.values.get(header), digits) for row in block]
            columns.append(_marks(cells, header in LOWER_IS_BETTER))
        for i, row in enumerate(block):
            lines.append(f"| {_ratio_label(row)} | {row.method} | " + " | ".join(c[i] for c in columns) + " |")
    accuracy = ("acc_norm for PQ and ARC, acc for CP, WG and LB" if metric == "headline"
                else f"{metric} (acc where a task has no {metric})" if metric != "acc" else "acc")
    lines += ["", f"Ratio: parameters removed (1 - kept ratio). C4, Wiki.: perplexity (lower is better). "
              f"CP, PQ, ARC, WG, LB: zero-shot accuracy, {accuracy} (higher is better); Avg: their mean, only when "
              f"all {len(PAPER_TASKS)} were run. Best per ratio in bold, second best underlined; "
              f"{NOT_RUN_CELL}: not run."]
    return "\n".join(lines) + "\n"


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


__all__ = [
    "COLUMNS", "Row", "add_report_arguments", "blocks", "merge_rows", "render_markdown", "report", "report_command",
    "row_values",
]
