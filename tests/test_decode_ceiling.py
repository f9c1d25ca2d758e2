"""benchmarks/decode_ceiling.py: the decode step's ceiling when only the compressed matmuls get faster."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decode_ceiling  # noqa: E402


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_ceiling_keeps_the_work_outside_the_matmuls_and_moves_their_bytes_at_cublas_rate(tmp_path, capsys):
    """Dense: a 5 ms step whose matmuls take 4 ms for 12 GB (3 TB/s); compressed at 0.3: a 3 ms step whose
    matmuls take 2 ms for 4 GB, so 1 ms stays outside them. At cuBLAS's 3 TB/s its matmuls would take 1.33 ms:
    5 / 2.33 = 2.14x. A target of 0.85 x a 3.0x bound (2.55x, a 1.96 ms step) leaves them 0.96 ms: 4.16 TB/s."""
    record = {"phase": "decode", "batch": 1, "ratio": 0.3, "shape": "s", "dense_ms": 5.0, "compressed_ms": 3.0,
              "bound": 3.0}
    steps = write(tmp_path / "steps.json", {"records": [record, {**record, "batch": 16, "compressed_ms": 9.0},
                                                        {**record, "phase": "prefill", "compressed_ms": 9.0}]})
    rows = [{"variant": "dense", "tokens": 1, "seconds": 4e-3, "bytes": 12e9},
            {"variant": "grouped T", "tokens": 1, "seconds": 2e-3, "bytes": 4e9},
            {"variant": "grouped T", "tokens": 16, "seconds": 9e-3, "bytes": 4e9}]
    matmuls = write(tmp_path / "mm.json", {"shape": "s", "ratio": 0.3, "rows": rows})
    got = decode_ceiling.main(["--steps", str(steps), "--matmuls", str(matmuls), "--variant", "grouped T"])[0.3]
    assert got["outside"] == pytest.approx(1.0) and got["dense_outside"] == pytest.approx(1.0)
    assert got["cublas_rate"] == pytest.approx(3.0) and got["rate"] == pytest.approx(2.0)
    assert got["speedup"] == pytest.approx(5 / 3) and got["goal"] == pytest.approx(2.55)
    assert got["ceiling"] == pytest.approx(5 / (1 + 4 / 3))
    assert got["needed_rate"] == pytest.approx(4 / (5 / 2.55 - 1))
    assert "| 0.3 | 5.00 / 4.00 / 1.00 | 3.00 / 2.00 / 1.00 | 3.00 / 2.00 | 1.67x | 2.55x | 2.14x | 4.16 |" \
        in capsys.readouterr().out


def test_a_missing_variant_or_no_common_ratio_fails_in_one_line(tmp_path):
    matmuls = write(tmp_path / "mm.json", {"shape": "s", "ratio": 0.5, "rows": [
        {"variant": "dense", "tokens": 1, "seconds": 1.0, "bytes": 1.0}]})
    steps = write(tmp_path / "steps.json", {"records": []})
    with pytest.raises(SystemExit, match="no one-token rows 'dense' and 'grouped X'"):
        decode_ceiling.main(["--steps", str(steps), "--matmuls", str(matmuls), "--variant", "grouped X"])
    with pytest.raises(SystemExit, match="no ratio has both"):
        decode_ceiling.main(["--steps", str(steps), "--matmuls", str(matmuls), "--variant", "dense"])
