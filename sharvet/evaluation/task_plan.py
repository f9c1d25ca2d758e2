"""Tasks resolved to their data before any model runs: local files read and checked, hub tasks, not-run ones."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharvet.data import is_offline, resolve_data_dir
from sharvet.evaluation.task_files import expand_tasks, find_task_file, load_local_docs, missing_message
from sharvet.evaluation.task_results import NOT_RUN, TaskResult


@dataclass
class TaskPlan:
    """Tasks resolved to their data before any model runs: local docs (checked), hub tasks, and not-run ones."""

    local: dict[str, tuple[Path, list[dict[str, Any]]]] = field(default_factory=dict)
    hub: list[str] = field(default_factory=list)
    not_run: dict[str, TaskResult] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    data_dir: Path | None = None


def plan_tasks(
    names: Iterable[str], data_dir: str | Path | None = None, *, offline: bool | None = None, source: str = "auto"
) -> TaskPlan:
    """Find and check each task's data; malformed local data raises :class:`DataError` before anything runs.

    ``source``: ``auto`` uses the local file when there is one, else lm-eval's built-in task unless offline;
    ``local`` never downloads; ``hub`` always uses the built-in task.
    """
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"task source must be auto, local or hub, got {source!r}")
    root = resolve_data_dir(data_dir)
    plan = TaskPlan(order=expand_tasks(names, root), data_dir=root)
    for name in plan.order:
        path = find_task_file(name, root) if source != "hub" else None
        if path is not None:
            plan.local[name] = (path, load_local_docs(name, path))
        elif source == "hub" or (source == "auto" and not is_offline(offline)):
            plan.hub.append(name)
        else:
            why = "offline, so lm-eval's built-in task was not tried" if source == "auto" else "--task-source local"
            plan.not_run[name] = TaskResult(name, NOT_RUN, reason=missing_message(name, root, why))
    if (plan.local or plan.hub) and importlib.util.find_spec("lm_eval") is None:
        raise ValueError("tasks need lm-evaluation-harness, which is not installed: pip install 'sharvet[eval]'")
    return plan

