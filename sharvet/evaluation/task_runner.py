"""Zero-shot tasks through lm-evaluation-harness, from local files offline or lm-eval's built-in tasks online.

The paper's accuracies are lm-eval's COPA, PIQA, ARC-Easy, WinoGrande and LAMBADA (OpenAI); HellaSwag and
ARC-Challenge are run too when asked for (or by ``default`` when their data is present). So that the numbers
are comparable with published ones, the prompts, targets, metrics and few-shot settings are lm-eval's own:

* online, a task without local data is lm-eval's built-in task (which downloads its hub dataset);
* offline, or whenever the data directory holds the task's file, sharvet reads that file, checks every record
  (a bad one is reported by file and record index), writes it in the schema of the hub dataset that lm-eval's
  built-in task reads, and runs the task configuration shipped in ``sharvet/evaluation/tasks/``
  (:mod:`sharvet.evaluation.task_configs`).

A model in memory (an original model or a sharvet checkpoint) is wrapped in lm-eval's ``HFLM``; nothing is
saved or reloaded. Metrics are read from lm-eval's ``"<metric>,<filter>"`` keys (``"acc,none"``,
``"acc_norm,none"``); each task also gets a headline metric
(:data:`sharvet.evaluation.task_catalog.HEADLINE_METRICS`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharvet.evaluation.task_catalog import LOCAL_TASKS
from sharvet.evaluation.task_configs import build_task, local_task_manager, render_configs
from sharvet.evaluation.task_files import missing_message
from sharvet.evaluation.task_plan import TaskPlan, plan_tasks
from sharvet.evaluation.task_results import NOT_RUN, TaskResult, result_from_lm_eval

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager


def wrap_model(model: Any, tokenizer: Any, batch_size: int | str = 1, max_length: int | None = None) -> LM:
    """lm-eval's HF wrapper around a model already in memory (original or sharvet checkpoint)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _evaluate_one(lm: LM, task: Task, manager: TaskManager, *, limit: int | float | None, seed: int,
                  bootstrap_iters: int) -> TaskResult:
    import lm_eval

    start = time.perf_counter()
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, limit=limit, bootstrap_iters=bootstrap_iters,
        log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    result = result_from_lm_eval(task.task_name, output)
    result.limit, result.wall_time_s = limit, round(time.perf_counter() - start, 1)
    return result


def _hub_tasks(names: Sequence[str], lm: LM, data_dir: Path | None, **kwargs: Any) -> dict[str, TaskResult]:
    """Built-in tasks; one whose dataset cannot be downloaded is "not run", the others still run."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    results = {}
    for name in names:
        spec = LOCAL_TASKS[name]
        try:
            task = build_task(manager, name)
        except Exception as exc:  # network, hub or datasets errors all mean "data not available here"
            why = f"lm-eval's built-in task could not load {spec.hub} ({type(exc).__name__}: {exc})"
            results[name] = TaskResult(name, NOT_RUN, source="hub", reason=missing_message(name, data_dir, why))
            continue
        results[name] = _evaluate_one(lm, task, manager, **kwargs)
        results[name].source, results[name].data = "hub", spec.hub
    return results


def run_plan(plan: TaskPlan, model: Any, tokenizer: Any, *, limit: int | float | None = None,
             batch_size: int | str = 1, seed: int = 0, bootstrap_iters: int = 100_000,
             max_length: int | None = None) -> dict[str, TaskResult]:
    """Run the planned tasks on ``model``; results in the plan's order, not-run ones included."""
    results: dict[str, TaskResult] = dict(plan.not_run)
    if plan.local or plan.hub:
        lm = wrap_model(model, tokenizer, batch_size, max_length)
        kwargs = {"limit": limit, "seed": seed, "bootstrap_iters": bootstrap_iters}
        if plan.local:
            with tempfile.TemporaryDirectory(prefix="sharvet-tasks-") as tmp:
                manager = local_task_manager(render_configs(plan.local, Path(tmp)))
                for name, (path, _) in plan.local.items():
                    results[name] = _evaluate_one(lm, build_task(manager, name), manager, **kwargs)
                    results[name].source, results[name].data = "local", str(path)
        if plan.hub:  # indexing lm-eval's own tasks takes seconds: only when some are needed
            results.update(_hub_tasks(plan.hub, lm, plan.data_dir, **kwargs))
    return {name: results[name] for name in plan.order}


def run_tasks(model: Any, tokenizer: Any, names: Iterable[str] = ("default",), *,
              data_dir: str | Path | None = None, offline: bool | None = None, source: str = "auto",
              limit: int | float | None = None, batch_size: int | str = 1, seed: int = 0,
              bootstrap_iters: int = 100_000) -> dict[str, TaskResult]:
    """Evaluate ``model`` on lm-eval tasks (see module docs); ``limit`` scores only the first N documents."""
    plan = plan_tasks(names, data_dir, offline=offline, source=source)
    return run_plan(plan, model, tokenizer, limit=limit, batch_size=batch_size, seed=seed,
                    bootstrap_iters=bootstrap_iters)
