"""``sharvet eval``: perplexity and lm-eval tasks of one model, printed as a table and written as one JSON file.

The JSON holds what is needed to trust and compare a number later: the model and its compression (method,
ratio, realised parameter counts from the checkpoint's ``config.sharvet``), every metric with its protocol
(context/stride, task source, documents scored), the software versions, the seed and the wall time. A data set
that is not available is recorded as ``"status": "not run"`` with the reason (which file was looked for and how
to provide it) instead of stopping the other evaluations; malformed data stops the run before the model is used.
``sharvet report`` (:mod:`sharvet.evaluation.report`) merges such files into the paper's table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from sharvet.argtypes import at_least
from sharvet.data import DATASETS, DataNotFoundError, existing_path, resolve_data_dir
from sharvet.errors import EXIT_NOT_RUN, NonFiniteError
from sharvet.evaluation.perplexity import evaluation_tokens, perplexity
from sharvet.evaluation.task_plan import plan_tasks
from sharvet.evaluation.task_results import NOT_RUN, OK
from sharvet.evaluation.task_runner import run_plan
from sharvet.loading import LoadedModel
from sharvet.outputs import check_output_file

#: status of a perplexity that came out NaN or infinite (never a number to report)
NON_FINITE = "non-finite"

FORMAT = "sharvet-eval"
FORMAT_VERSION = 1
_PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "sharvet")


def software_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that produce the numbers (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """Model id, method and ratio, and parameter counts: the checkpoint's realised ones plus a fresh count."""
    from sharvet.accounting import stored_parameter_count

    plan = getattr(loaded.model.config, "sharvet", None) or {}
    settings = dict(plan.get("settings", {}))
    parameters = {"counted": stored_parameter_count(loaded.model), **settings.pop("parameters", {})}
    return {
        "model": loaded.model_id,
        "method": plan.get("method", "original"),
        "ratio": float(plan.get("ratio", 1.0)),
        "parameters": parameters,
        "compression_settings": settings or None,
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "quantization": getattr(loaded.model, "sharvet_quantization", None),
    }


def ppl_tokens(names: Sequence[str], tokenizer: Any, data_dir: Path | None, offline: bool | None,
               max_tokens: int | None) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Token ids per perplexity set; a missing set becomes a "not run" entry, malformed data raises."""
    tokens, not_run = {}, {}
    for name in names:
        try:
            ids = evaluation_tokens(name, tokenizer, data_dir, offline=offline)
        except DataNotFoundError as exc:
            not_run[name] = {"status": NOT_RUN, "reason": str(exc)}
            continue
        tokens[name] = ids[:max_tokens] if max_tokens else ids
    return tokens, not_run


def _run_perplexity(model: Any, tokens: Mapping[str, torch.Tensor], *, context: int, stride: int | None,
                    batch_size: int, device: str | None, progress: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for name, ids in tokens.items():
        start = time.perf_counter()
        r = perplexity(model, ids, context=context, stride=stride, batch_size=batch_size, device=device,
                       progress=progress)
        finite = math.isfinite(r.ppl)
        out[name] = {"status": OK if finite else NON_FINITE, "ppl": r.ppl,
                     **({} if finite else {"reason": f"perplexity is {r.ppl}: the model's outputs are not finite"}), "nll_sum": r.nll_sum, "n_tokens": r.n_tokens,
                     "n_windows": r.n_windows, "context": r.context, "stride": r.stride,
                     "wall_time_s": round(time.perf_counter() - start, 1)}
    return out


def _as_loaded(spec: str | LoadedModel | None, device: str | None, dtype: str | None,
               verify: bool = True) -> LoadedModel:
    if isinstance(spec, LoadedModel):
        return spec
    from sharvet.api import load_any

    return load_any(spec, device=device, dtype=dtype, verify=verify)


def evaluate(
    spec: str | LoadedModel | None,
    *,
    ppl: Iterable[str] = ("wikitext2",),
    tasks: Iterable[str] = (),
    data_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = "float32",
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 1,
    task_batch_size: int | str | None = None,
    max_tokens: int | None = None,
    limit: int | float | None = None,
    seed: int = 0,
    offline: bool | None = None,
    task_source: str = "auto",
    bootstrap_iters: int = 100_000,
    progress: bool = True,
    json_path: str | Path | None = None,
    print_table: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Perplexity on ``ppl`` and lm-eval ``tasks`` of a model; returns (and optionally writes) the result dict.

    ``spec`` is a checkpoint folder, a model spec for :func:`sharvet.api.load_any`, or a model already loaded.
    All data is found and checked before the model runs. ``max_tokens`` cuts each perplexity corpus and
    ``limit`` each task (quick runs; both are recorded). ``task_batch_size`` defaults to ``batch_size``.
    """
    start = time.perf_counter()
    if context < 2 or (stride is not None and not 1 <= stride <= context):
        raise ValueError("context must be >= 2 and stride in 1..context")
    root = resolve_data_dir(data_dir)
    ppl, tasks = [n.strip() for n in ppl if n.strip()], [n.strip() for n in tasks if n.strip()]
    plan = plan_tasks(tasks, root, offline=offline, source=task_source)
    json_path = check_output_file(json_path, "json_path")
    loaded = _as_loaded(spec, device, dtype, verify)
    tokens, ppl_not_run = ppl_tokens(ppl, loaded.tokenizer, root, offline, max_tokens)
    ppl_results = {**ppl_not_run, **_run_perplexity(loaded.model, tokens, context=context, stride=stride,
                                                     batch_size=batch_size, device=device, progress=progress)}
    task_results = run_plan(plan, loaded.model, loaded.tokenizer, limit=limit, seed=seed,
                            batch_size=task_batch_size or batch_size, bootstrap_iters=bootstrap_iters)
    result = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model_record(loaded),
        "perplexity": {name: ppl_results[name] for name in ppl},
        "tasks": {name: r.to_dict() for name, r in task_results.items()},
        "settings": {"context": context, "stride": stride or context, "batch_size": batch_size,
                     "task_batch_size": task_batch_size or batch_size, "max_tokens": max_tokens, "limit": limit,
                     "task_source": task_source, "device": str(next(loaded.model.parameters()).device),
                     "data_dir": str(root) if root else None, "bootstrap_iters": bootstrap_iters},
        "seed": seed,
        "versions": software_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    if print_table:
        print(format_table(result))
    if json_path is not None:
        write_results(result, json_path)
    return result


def write_results(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write a result dict as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """A result JSON written by :func:`write_results` (or by the older ``sharvet eval``, perplexity only)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"result file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON result file ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not ("perplexity" in data or "tasks" in data):
        raise ValueError(f"{path}: not a sharvet eval result (no 'perplexity' or 'tasks')")
    return data


def _ppl_line(name: str, r: Mapping[str, Any]) -> str:
    if r.get("status", OK) != OK:
        return f"  {name:16s} {'–':>10s}  {r.get('status')}: {r.get('reason', '')}"
    return (f"  {name:16s} {r['ppl']:10.3f}  ({r['n_tokens']:,} tokens, context {r['context']}, "
            f"stride {r['stride']})")


def _task_line(name: str, r: Mapping[str, Any]) -> str:
    if r.get("status", OK) != OK:
        return f"  {name:16s} {'–':>10s}  {r.get('status')}: {r.get('reason', '')}"
    metrics = r.get("metrics", {})
    shown = ", ".join(f"{m} {metrics[m]:.4f}" for m in ("acc", "acc_norm", "perplexity")
                      if metrics.get(m) is not None)
    head = r.get("headline")
    limit = f", limit {r['limit']}" if r.get("limit") is not None else ""
    return (f"  {name:16s} {head if head is None else f'{head:10.4f}'}  {r.get('headline_metric')}  ({shown}; "
            f"{r.get('n_samples')} docs, {r.get('num_fewshot', 0)}-shot, {r.get('source')}{limit})")


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of one result: perplexities, then tasks with their headline metric."""
    lines = [f"{result.get('model')}  method {result.get('method')}  ratio {result.get('ratio')}"]
    if result.get("perplexity"):
        lines.append("perplexity (lower is better)")
        lines += [_ppl_line(n, r) for n, r in result["perplexity"].items()]
    if result.get("tasks"):
        lines.append("tasks (headline metric: acc_norm for PIQA/ARC/HellaSwag, acc otherwise)")
        lines += [_task_line(n, r) for n, r in result["tasks"].items()]
    return "\n".join(lines)



def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``sharvet eval`` (the CLI adds its common --device/--dtype/--seed/--data-dir/--no-progress)."""
    p.add_argument("model", nargs="?", default=None, help="checkpoint folder, hub id, folder or .gguf")
    p.add_argument("--ppl", default="wikitext2", help="comma list of wikitext2, c4, ptb or text files ('' for none)")
    p.add_argument("--tasks", default="", help="comma list of copa, piqa, arc_easy, winogrande, lambada, hellaswag, "
                   "arc_challenge; 'default' is the paper's five plus hellaswag/arc_challenge if their data is present")
    p.add_argument("--limit", type=float, default=None, help="score only the first N documents of each task "
                   "(quick runs; below 1: a fraction)")
    p.add_argument("--task-source", default="auto", choices=("auto", "local", "hub"),
                   help="auto: the local file when the data dir has it, else lm-eval's built-in task unless offline")
    p.add_argument("--offline", action="store_true", help="never download (as HF_DATASETS_OFFLINE=1)")
    p.add_argument("--context", type=at_least(2), default=1024, help="perplexity window")
    p.add_argument("--stride", type=at_least(1), default=None, help="default: context")
    p.add_argument("--batch-size", type=at_least(1), default=1, help="perplexity windows / lm-eval requests per batch")
    p.add_argument("--max-tokens", type=at_least(1), default=None,
                   help="evaluate only the first N tokens (quick runs)")
    p.add_argument("--json", default=None, help="write results to this JSON file")


def _names(value: str | None) -> list[str]:
    return [n for n in (value or "").split(",") if n.strip()]


def _limit(value: float | None) -> int | float | None:
    """--limit N scores the first N documents of each task; a value below 1 is a fraction, as in lm-eval."""
    if value is None:
        return None
    if value <= 0:
        raise ValueError(f"--limit must be positive, got {value}")
    return int(value) if value >= 1 else value


def check_ppl_names(names: Sequence[str], root: Path | None) -> None:
    """A perplexity set must be a known data set or an existing path: a typo is an error, not "not run"."""
    unknown = [n for n in names if n not in DATASETS and existing_path(n, root) is None]
    if unknown:
        raise ValueError(f"--ppl {','.join(unknown)}: neither a known data set ({', '.join(sorted(DATASETS))}) "
                         "nor an existing file or folder")


def problems(result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(items that did not run, items whose value is not finite) of a result."""
    rows = [(f"perplexity {n}", r) for n, r in result.get("perplexity", {}).items()]
    rows += [(f"task {n}", r) for n, r in result.get("tasks", {}).items()]
    return [n for n, r in rows if r.get("status") == NOT_RUN], [n for n, r in rows if r.get("status") == NON_FINITE]


def eval_command(a: Any, on_start: Callable[[], None] = lambda: None) -> int:
    """``sharvet eval`` on arguments parsed by :func:`add_eval_arguments` plus the CLI's common ones.

    Everything that can be checked is checked before the model loads (the JSON path, the data names); the
    table is printed before the JSON is written, so a failed write never loses the numbers. Exit codes:
    0 all ran, 3 some items did not run (data missing), 4 a non-finite perplexity (see sharvet.errors).
    """
    json_path = check_output_file(a.json, "--json")
    check_ppl_names(_names(a.ppl), resolve_data_dir(a.data_dir))
    on_start()
    result = evaluate(a.model, ppl=_names(a.ppl), tasks=_names(a.tasks), data_dir=a.data_dir, device=a.device,
                      dtype=a.dtype, context=a.context, stride=a.stride, batch_size=a.batch_size,
                      max_tokens=a.max_tokens, limit=_limit(a.limit), seed=a.seed,
                      offline=True if a.offline else None, task_source=a.task_source, progress=not a.no_progress,
                      verify=not a.no_verify)
    if json_path is not None:
        try:
            write_results(result, json_path)
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror}; the results are printed above, not written", str(json_path)) \
                from None
    not_run, non_finite = problems(result)
    if non_finite:
        raise NonFiniteError(f"{', '.join(non_finite)} of {result['model']} is not finite: its weights are damaged "
                             "or diverged (check the model with sharvet info)")
    if not_run:
        print(f"sharvet: not run: {', '.join(not_run)} (reasons above); exit code {EXIT_NOT_RUN}", file=sys.stderr)
        return EXIT_NOT_RUN
    return 0


__all__ = [
    "add_eval_arguments", "eval_command", "evaluate", "format_table", "model_record", "read_results",
    "software_versions", "write_results",
]
