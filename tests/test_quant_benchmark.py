"""benchmarks/table11_smollm2.py: row names, the byte count of the linear modules, the table, a whole tiny run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import table11_smollm2 as t11  # noqa: E402


@pytest.mark.parametrize("row, parsed", [
    ("original", (False, None, True)), ("rtn4", (False, 4, True)), ("rtn3", (False, 3, True)),
    ("sharvet", (True, None, True)), ("sharvet+rtn4", (True, 4, True)), ("sharvet+rtn4-plain", (True, 4, False)),
])
def test_rows_parse(row, parsed):
    assert t11.parse_row(row) == parsed


def test_an_unknown_row_is_refused():
    with pytest.raises(ValueError, match="unknown row"):
        t11.parse_row("gptq4")


def test_whole_run_on_a_tiny_model(model_dir, data_dir, tmp_path):
    """Compressed here at 0.6, every row scored on the tiny data; bytes: 4-bit < fp16, sharing + 4-bit < 4-bit."""
    out = tmp_path / "t11.json"
    res = t11.main(["--model", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu", "--ratio", "0.6",
                    "--calib-samples", "2", "--ppl", "wikitext2", "--tasks", "", "--max-tokens", "256",
                    "--rows", "original,rtn4,sharvet,sharvet+rtn4", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(res["rows"], default=str))
    rows = {r["row"]: r for r in res["rows"]}
    assert rows["rtn4"]["bytes"] < rows["original"]["bytes"] and rows["sharvet+rtn4"]["bytes"] < rows["rtn4"]["bytes"]
    assert rows["sharvet+rtn4"]["linear_bytes"] < rows["rtn4"]["linear_bytes"] < rows["original"]["linear_bytes"]
    assert all(r["perplexity"]["wikitext2"] > 1 for r in res["rows"]) and res["sharvet"]["refined"] is False
    assert "| sharvet+rtn4 |" in res["table"]


def test_int4_matvec_cli_times_every_case_and_writes_its_rows(tmp_path, monkeypatch):
    """benchmarks/int4_decode.py on its own (small shapes for speed): four cases a module, dense bf16 first at 1.00x,
    the int4 and factorised bytes bounds from the shapes, the rows in the JSON it writes."""
    import int4_decode

    monkeypatch.setattr(int4_decode, "SHAPES_8B", {"q": (256, 256), "down": (128, 384)})
    out = tmp_path / "int4.json"
    rows = int4_decode.main(["--ratios", "0.5", "--reps", "1", "--device", "cpu", "--json", str(out)])
    assert [r["case"] for r in rows[:4]] == ["dense bf16", "dense int4", "factorised 0.5 bf16", "factorised 0.5 int4"]
    assert len(rows) == 8 and rows[0]["speedup_vs_dense_bf16"] == 1.0
    assert rows[2]["bytes_bound"] == pytest.approx(2.0, rel=0.01)  # rank 0.5 m n / (m + n): half the bytes
    assert 3.5 < rows[1]["bytes_bound"] < 4.0  # 4-bit codes plus a scale and offset per 128
    assert json.loads(out.read_text())["rows"] == rows
