"""One result-row schema for every experiment: a model (the original, or a method at a ratio, maybe refined) and
what was measured on it; and the run record that holds a set of rows with the settings they share.

:mod:`sharvet.experiment` writes these, ``sharvet report`` and the study read them. Readers for the two older
shapes are here too: ``sharvet eval``'s result JSON (:func:`row_from_eval_result`) and the study's
``methods_smollm2.py`` JSON before this schema (:func:`read_run` reads both that and the current format).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sharvet.evaluation.task_results import OK

FORMAT = "sharvet-experiment"
FORMAT_VERSION = 1
WIKITEXT2 = "wikitext2"
ORIGINAL = "original"
#: task accuracy to read: lm-eval's headline metric per task, or acc / acc_norm (acc where a task has no acc_norm)
METRICS = ("headline", "acc", "acc_norm")


@dataclass
class ResultRow:
    """A model and its measurements. Perplexities are per data set name; tasks are
    :meth:`sharvet.evaluation.task_results.TaskResult.to_dict` entries (a not-run task keeps its reason)."""

    method: str  # "original" for the uncompressed model
    ratio: float  # kept fraction of the compressed linear modules' parameters (1.0: the original)
    variants: tuple[str, ...] = ()
    lr: float | None = None  # the run's refinement learning rate
    refine_mode: str | None = None  # both / lambda / sigma / lora; None: not refined
    perplexity: dict[str, float] = field(default_factory=dict)  # of the final model
    #: before refinement; empty when the row was not refined (its perplexity is then the untuned one)
    perplexity_untuned: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    realised_ratio: float | None = None
    model_ratio: float | None = None
    trainable: int | None = None
    total_with_adapters: int | None = None
    steps: int | None = None
    lm_only: bool | None = None
    compress_s: float | None = None
    refine_s: float | None = None
    final_losses: dict[str, float] | None = None
    loss_weights: dict[str, float] | None = None
    history: str | None = None  # the refinement's loss history (history.jsonl)
    command: str | None = None  # the command line that produced the row, where known

    @property
    def refined(self) -> bool:
        return bool(self.perplexity_untuned)

    @property
    def is_original(self) -> bool:
        return self.ratio >= 1.0 or self.method == ORIGINAL

    @property
    def label(self) -> str:
        """``method`` or ``method:VARIANT+VARIANT``, as rows are named on the command line."""
        return self.method + (":" + "+".join(self.variants) if self.variants else "")

    def ppl(self, name: str = WIKITEXT2) -> float | None:
        return self.perplexity.get(name)

    def untuned_ppl(self, name: str = WIKITEXT2) -> float | None:
        """Perplexity of the compressed model before any refinement."""
        return self.perplexity_untuned.get(name) if self.refined else self.perplexity.get(name)

    def accuracy(self, task: str, metric: str = "headline") -> float | None:
        """The task's accuracy (a fraction) by ``metric``; None when not run."""
        entry = self.tasks.get(task)
        if not entry or entry.get("status", OK) != OK:
            return None
        if metric == "headline":
            value = entry.get("headline")
        else:
            metrics = entry.get("metrics", {})
            value = metrics.get(metric) if metrics.get(metric) is not None else metrics.get("acc")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def accuracy_stderr(self, task: str) -> float | None:
        """lm-eval's standard error of the task's headline accuracy (a fraction); None when not run."""
        entry = self.tasks.get(task)
        if not entry or entry.get("status", OK) != OK or entry.get("headline_metric") is None:
            return None
        return entry.get("metrics", {}).get(f"{entry['headline_metric']}_stderr")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        out["variants"] = list(self.variants)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown result-row fields {sorted(unknown)}")
        return cls(**{**data, "variants": tuple(data.get("variants", ()))})


@dataclass
class RunRecord:
    """Rows measured by one command with shared settings (data, fine-tuning set, evaluation protocol)."""

    rows: list[ResultRow]
    original: ResultRow | None = None  # the uncompressed model, scored the same way
    settings: dict[str, Any] = field(default_factory=dict)  # the command's settings (its arguments)
    date: str | None = None
    device: str | None = None
    eval_tokens: int | None = None  # held-out WikiText-2 tokens scored
    ppl_tokens: dict[str, int] = field(default_factory=dict)  # tokens scored of each further set
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        head = {"format": FORMAT, "format_version": FORMAT_VERSION}
        body = {k: v for k, v in asdict(self).items() if k not in ("rows", "original")}
        return {**head, **body, "original": self.original.to_dict() if self.original else None,
                "rows": [row.to_dict() for row in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        if data.get("format") != FORMAT:
            return _run_from_study_json(data)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{FORMAT} version {data.get('format_version')} is not {FORMAT_VERSION}")
        body = {k: v for k, v in data.items() if k not in ("format", "format_version", "rows", "original")}
        original = ResultRow.from_dict(data["original"]) if data.get("original") else None
        return cls(rows=[ResultRow.from_dict(r) for r in data["rows"]], original=original, **body)


def write_run(run: RunRecord, path: str | Path) -> Path:
    """The run as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_run(path: str | Path) -> RunRecord:
    """A run written by :func:`write_run`, or by the study's ``methods_smollm2.py`` before this schema."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path}: not an experiment run (no 'rows')")
    return RunRecord.from_dict(data)


# ------------------------------------------------------------------------------------------ older shapes


def _run_from_study_json(data: Mapping[str, Any]) -> RunRecord:
    """The study's JSON before this schema: ``ppl_untuned`` / ``ppl_tuned`` (held-out WikiText-2) and
    ``extra_ppl`` per row, the learning rate in ``args``, the original model's scores at the top."""
    lr = data.get("args", {}).get("lr")
    rows = []
    for r in data["rows"]:
        untuned = {WIKITEXT2: r["ppl_untuned"]} if "ppl_tuned" in r else {}
        final = {WIKITEXT2: r.get("ppl_tuned", r["ppl_untuned"]), **r.get("extra_ppl", {})}
        rows.append(ResultRow(
            method=r["method"], ratio=r["ratio"], variants=tuple(r["variants"]), lr=lr,
            refine_mode=r.get("refine_mode"), perplexity=final, perplexity_untuned=untuned, tasks=r.get("tasks", {}),
            **{k: r.get(k) for k in ("realised_ratio", "model_ratio", "trainable", "total_with_adapters", "steps",
                                     "lm_only", "compress_s", "refine_s", "final_losses", "loss_weights", "history")}))
    original = ResultRow(ORIGINAL, 1.0, perplexity={WIKITEXT2: data["original_ppl"], **data.get("original_extra_ppl", {})},
                         tasks=data.get("original_tasks", {}))
    return RunRecord(rows, original, settings=dict(data.get("args", {})), date=data.get("date"),
                     device=data.get("device"), eval_tokens=data.get("eval_tokens"),
                     ppl_tokens=dict(data.get("extra_ppl_tokens", {})), wall_s=data.get("wall_s"))


def row_from_eval_result(result: Mapping[str, Any]) -> ResultRow:
    """A row from ``sharvet eval``'s result JSON (or the older one that kept the plan under ``sharvet``)."""
    plan = result.get("sharvet") or {}
    method = result.get("method") or plan.get("method") or ORIGINAL
    ratio = result.get("ratio") if result.get("ratio") is not None else plan.get("ratio", 1.0)
    ppl = {name: float(e["ppl"]) for name, e in (result.get("perplexity") or {}).items()
           if e and e.get("status", OK) == OK and isinstance(e.get("ppl"), (int, float))}
    return ResultRow(str(method), round(float(ratio), 4), perplexity=ppl, tasks=dict(result.get("tasks") or {}))


__all__ = ["METRICS", "ResultRow", "RunRecord", "read_run", "row_from_eval_result", "write_run"]
