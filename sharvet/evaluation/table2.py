"""The paper's Table 2 as Markdown: methods by compression ratio, perplexities and the five zero-shot accuracies
with their average. One renderer, and one averaging rule, for ``sharvet report`` and the study.

Averaging rule (the only one): ``Avg`` is the unweighted mean of the accuracies of the paper's five tasks (COPA,
PIQA, ARC-Easy, WinoGrande, LAMBADA), given only for a row where all five were run, so that an average over fewer
tasks is never compared with a full one. Its standard error (:func:`average_stderr`) combines lm-eval's per-task
standard errors as independent samples. Every rendered table states the rule in its caption (:data:`AVERAGE_RULE`).

Rows come in blocks: the original model first, then one block per ratio, least compressed first, each in the
order given. A caller chooses the columns (:class:`Column`) and a :class:`Style` (how numbers and missing
values are written, whether the best and second best of a block are marked).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sharvet.evaluation.rows import ResultRow
from sharvet.evaluation.task_catalog import PAPER_TASKS

#: per paper task: (short header as in the paper's table, long name)
TASK_NAMES = {"copa": ("CP", "COPA"), "piqa": ("PQ", "PIQA"), "arc_easy": ("ARC", "ARC-E"),
              "winogrande": ("WG", "WG"), "lambada_openai": ("LB", "LAMBADA")}
AVERAGE_RULE = "Avg: the mean of the five tasks' accuracies, only where all five were run"


def average_accuracy(row: ResultRow, metric: str = "headline") -> float | None:
    """The mean accuracy (a fraction) of the paper's five tasks; None unless all five were run."""
    values = [row.accuracy(t, metric) for t in PAPER_TASKS]
    return None if None in values else sum(values) / len(values)


def average_stderr(row: ResultRow) -> float | None:
    """Standard error (a fraction) of :func:`average_accuracy`: sqrt(sum se^2) / n over the five tasks, the tasks
    being independent samples; None unless all five were run (NaN where lm-eval gave no standard error)."""
    if average_accuracy(row) is None:
        return None
    errors = [row.accuracy_stderr(t) for t in PAPER_TASKS]
    return math.sqrt(sum(float("nan") if e is None else e * e for e in errors)) / len(errors)


@dataclass(frozen=True)
class Style:
    """How cells are written."""

    not_run: str  # a value that was not run
    thousands: bool  # "2,310.53", and values of 10,000 or more without decimals
    marks: bool  # the best value of a block bold, the second underlined (columns with ``better``)
    right_align: bool  # numeric columns right-aligned

    def number(self, value: float | None, digits: int) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.not_run
        if not self.thousands:
            return f"{value:.{digits}f}"
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:,.{digits}f}"


#: ``sharvet report``: the paper's look (fractions, best bold, second underlined)
REPORT = Style(not_run="–", thousands=False, marks=True, right_align=True)
#: the study's tables in docs/results.md
STUDY = Style(not_run="n/a", thousands=True, marks=False, right_align=False)


@dataclass(frozen=True)
class Column:
    """A column: its header, its value per row (a number, a text shown as is, or None), digits for numbers, and
    whether lower or higher is better (marked per block when the style marks)."""

    header: str
    value: Callable[[ResultRow], Any]
    digits: int = 2
    better: str | None = None  # "lower" / "higher"


def accuracy_columns(*, short: bool, percent: bool, digits: int, metric: str = "headline",
                     average_header: str = "Avg") -> list[Column]:
    """The five tasks' accuracy columns and their average (by :data:`AVERAGE_RULE`)."""
    scale = 100 if percent else 1

    def scaled(value: float | None) -> float | None:
        return None if value is None else scale * value

    columns = [Column(TASK_NAMES[t][0 if short else 1], lambda r, t=t: scaled(r.accuracy(t, metric)), digits,
                      "higher") for t in PAPER_TASKS]
    return columns + [Column(average_header, lambda r: scaled(average_accuracy(r, metric)), digits, "higher")]


def blocks(rows: Sequence[ResultRow]) -> list[list[ResultRow]]:
    """The original model(s) first, then one block per ratio, least compressed first."""
    original = [r for r in rows if r.is_original]
    ratios = sorted({r.ratio for r in rows if not r.is_original}, reverse=True)
    compressed = [[r for r in rows if not r.is_original and r.ratio == ratio] for ratio in ratios]
    return [b for b in [original, *compressed] if b]


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A Markdown table; ``right[i]`` right-aligns column i."""
    align = "".join("---:|" if i < len(right) and right[i] else "---|" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def _cells(block: Sequence[ResultRow], column: Column, style: Style) -> list[str]:
    values = [column.value(row) for row in block]
    cells = [v if isinstance(v, str) else style.number(v, column.digits) for v in values]
    if not (style.marks and column.better):
        return cells
    shown = [float(c) for v, c in zip(values, cells) if not isinstance(v, str) and c != style.not_run]
    if len(shown) < 2:
        return cells
    ranked = sorted(set(shown), reverse=column.better == "higher")
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
    out = []
    for value, cell in zip(values, cells):
        number = None if isinstance(value, str) or cell == style.not_run else float(cell)
        out.append(f"**{cell}**" if number == best else f"<u>{cell}</u>" if number == second else cell)
    return out


def render(rows: Sequence[ResultRow], columns: Sequence[Column], style: Style, caption: str = "") -> str:
    """The table (in :func:`blocks` order) and its caption, which ends with :data:`AVERAGE_RULE`."""
    body: list[list[str]] = []
    for block in blocks(rows):
        per_column = [_cells(block, column, style) for column in columns]
        body += [[cells[i] for cells in per_column] for i in range(len(block))]
    right = [style.right_align and column.better is not None for column in columns]
    note = f"{caption} {AVERAGE_RULE}." if caption else f"{AVERAGE_RULE}."
    return markdown_table([c.header for c in columns], body, right) + "\n\n" + note
