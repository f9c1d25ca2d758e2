"""Data files on disk: which split a file holds (from its name) and its records, for every supported format.

One reader for the text corpora (:mod:`sharvet.data`) and the task files
(:mod:`sharvet.evaluation.task_files`), so that both accept the same names and formats and report a bad file
the same way: by path and record. Formats: ``.txt``/``.raw`` (a record per line, blank lines dropped),
``.json`` (a list of records, or JSON lines), ``.jsonl`` (these optionally gzipped, ``.gz``) and ``.parquet``.
A file with no records fails, naming the file.
"""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO


class DataError(ValueError):
    """Data could not be found or read; the message says what was looked for and how to fix it."""


class DataNotFoundError(DataError):
    """No data exists for the requested source and split (as opposed to data that exists but is malformed)."""


#: split words in file names (and split arguments) -> canonical split
SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "valid": "validation",
                 "validation": "validation", "val": "validation", "dev": "validation"}
LINE_FORMATS = (".txt", ".raw")
#: formats of records (a JSON object or a table row), in order of preference when a folder holds several
RECORD_FORMATS = (".jsonl", ".json", ".parquet")
#: (where, record): ``where`` names the record for messages ("record 3 (line 5)")
Record = tuple[str, Any]


def file_format(path: Path) -> str | None:
    """The format of a supported file (``.txt``, ``.raw``, ``.json``, ``.jsonl``, ``.parquet``; ``.gz`` looked
    through for all but parquet), or None."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return ".parquet"
    suffix = Path(name.removesuffix(".gz")).suffix
    return suffix if suffix in LINE_FORMATS + RECORD_FORMATS else None


def split_tags(path: Path) -> set[str]:
    """Splits named in a file name, e.g. ``{"test"}`` for ``wiki.test.raw``, ``{"validation"}`` for ``dev.jsonl``."""
    words = re.split(r"[^a-z0-9]+", path.name.lower())
    return {SPLIT_ALIASES[word] for word in words if word in SPLIT_ALIASES}


def supported_files(folder: Path, formats: Iterable[str] = LINE_FORMATS + RECORD_FORMATS) -> list[Path]:
    """The folder's files of ``formats``, hidden files left out, sorted by name."""
    wanted = set(formats)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and file_format(p) in wanted)


def files_for_split(files: Sequence[Path], split: str) -> list[Path]:
    """Files named for ``split``; if none is, files that name no split at all."""
    named = [p for p in files if split in split_tags(p)]
    return named or [p for p in files if not split_tags(p)]


def open_text(path: Path) -> TextIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _json_records(path: Path) -> list[Record]:
    """A JSON list (or a single object), else JSON lines; a record's ``where`` names its line."""
    with open_text(path) as handle:
        content = handle.read()
    if file_format(path) == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            if content.lstrip().startswith("["):
                raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            data = None  # not a single document: read it as JSON lines below
        if isinstance(data, dict):
            return [("record 0", data)]
        if data is not None:
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of records or JSON lines")
            return [(f"record {i}", row) for i, row in enumerate(data)]
    rows: list[Record] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            where = f"record {len(rows)} (line {number})"
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: {where} is not valid JSON ({exc.msg})") from None
    return rows


def parquet_columns(path: Path) -> list[str]:
    """Column names of a parquet file, without reading its rows (pyarrow), or from the table (pandas)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return list(_pandas(path).read_parquet(path).columns)
    return list(pq.read_schema(path).names)


def _pandas(path: Path) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow or pandas (pip install pyarrow)") from None
    return pd


def _parquet_records(path: Path, columns: Sequence[str] | None) -> list[Record]:
    """Rows as dicts (only ``columns`` if given), read with pyarrow or else pandas."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        frame = _pandas(path).read_parquet(path, columns=list(columns) if columns else None)
        rows = frame.to_dict(orient="records")
    else:
        rows = pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
    return [(f"record {i}", row) for i, row in enumerate(rows)]


def read_records(path: str | Path, *, columns: Sequence[str] | None = None) -> list[Record]:
    """``(where, record)`` pairs of one file: lines are strings, JSON records as parsed, parquet rows as dicts
    (only ``columns`` if given). An unsupported, missing or empty file raises :class:`DataError` naming it."""
    path = Path(path)
    fmt = file_format(path)
    if fmt is None:
        raise DataError(f"{path}: unsupported file type (use .txt, .raw, .json, .jsonl, optionally .gz, or .parquet)")
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file")
    if fmt in LINE_FORMATS:
        with open_text(path) as handle:
            rows = [(f"line {n}", line.rstrip("\r\n")) for n, line in enumerate(handle, start=1) if line.strip()]
    elif fmt == ".parquet":
        rows = _parquet_records(path, columns)
    else:
        rows = _json_records(path)
    if not rows:
        raise DataError(f"{path}: no records (the file is empty)")
    return rows
