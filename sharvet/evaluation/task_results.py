"""One task's outcome, read from lm-eval's output: every metric, the headline one, or why it was not run.

Metrics are read from lm-eval's ``"<metric>,<filter>"`` keys (``"acc,none"``, ``"acc_norm,none"``); the headline
metric per task is :data:`sharvet.evaluation.task_catalog.HEADLINE_METRICS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sharvet.evaluation.task_catalog import HEADLINE_METRICS

NOT_RUN = "not run"
OK = "ok"


@dataclass
class TaskResult:
    """One task's outcome: every metric lm-eval reported, the headline one, or why it was not run."""

    name: str
    status: str = OK
    source: str | None = None  # "local" (shipped config on a local file) or "hub" (lm-eval's built-in task)
    data: str | None = None  # the local file, or the hub dataset
    metrics: dict[str, float | None] = field(default_factory=dict)
    headline_metric: str | None = None
    headline: float | None = None
    n_samples: int | None = None  # documents scored (after --limit)
    n_docs: int | None = None  # documents in the split
    num_fewshot: int | None = None
    limit: int | float | None = None
    reason: str | None = None
    wall_time_s: float | None = None
    #: one character per scored document in document order, "1" where the headline metric scored it right (tasks
    #: whose headline is right-or-wrong per document): what comparing two models on the same questions needs
    correct: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # lm-eval writes "N/A" for stderrs it did not compute
    return float(value) if math.isfinite(value) else None


def parse_metrics(task_results: Mapping[str, Any]) -> dict[str, float | None]:
    """Metrics from one task's entry of lm-eval's ``results``: ``"acc,none"`` -> ``acc``, ``"acc_norm,none"``
    -> ``acc_norm``, ``"acc_stderr,none"`` -> ``acc_stderr``; another filter keeps its name (``"acc,strict"``
    -> ``acc[strict]``). The key is split on its comma, so acc_norm is never mistaken for acc."""
    metrics: dict[str, float | None] = {}
    for key, value in task_results.items():
        if "," not in key:
            continue  # "alias", "name", ...
        metric, _, filter_name = key.partition(",")
        metrics[metric if filter_name == "none" else f"{metric}[{filter_name}]"] = _number(value)
    return metrics


def headline_of(name: str, metrics: Mapping[str, float | None]) -> tuple[str | None, float | None]:
    """The task's headline metric and value (:data:`HEADLINE_METRICS`; acc if that metric is missing)."""
    for metric in (HEADLINE_METRICS.get(name, "acc"), "acc"):
        if metrics.get(metric) is not None:
            return metric, metrics[metric]
    return None, None


def correct_of(samples: list[Mapping[str, Any]], metric: str | None) -> str | None:
    """Each document's outcome of ``metric`` from lm-eval's logged samples (filter "none"), in document order, or
    None where the metric is not 0 or 1 per document."""
    scored = sorted((s for s in samples if s.get("filter", "none") == "none"), key=lambda s: s["doc_id"])
    values = [s.get(metric) for s in scored]
    if not values or any(v not in (0, 1) for v in values):
        return None
    return "".join("1" if v else "0" for v in values)


def result_from_lm_eval(name: str, output: Mapping[str, Any]) -> TaskResult:
    """A :class:`TaskResult` from the dict ``lm_eval.simple_evaluate`` returned (with its logged samples, each
    document's outcome too)."""
    metrics = parse_metrics(output["results"][name])
    metric, value = headline_of(name, metrics)
    samples = output.get("n-samples", {}).get(name, {})
    return TaskResult(name, metrics=metrics, headline_metric=metric, headline=value,
                      n_samples=samples.get("effective"), n_docs=samples.get("original"),
                      num_fewshot=output.get("n-shot", {}).get(name),
                      correct=correct_of(output.get("samples", {}).get(name, []), metric))


