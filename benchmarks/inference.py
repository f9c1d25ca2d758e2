"""Benchmark (issue 17): inference speed and memory of compressed models against dense, with the bytes-read bound.

``sharvet bench`` with the records going to ``results/inference/summary.json`` (``--out`` elsewhere); every flag of
``sharvet bench --help`` passes through. What is measured and how: ``sharvet/inference/bench.py``; the inference
form it runs: ``sharvet/inference/form.py``; the results and their reading: ``docs/inference.md``.

    # SmolLM2-135M compressed to 0.5 against the original, end to end through generate (a GPU: bf16, static cache,
    # compiled decode), then LLaMA-3-8B shapes with random weights at three ratios plus a stacked-first-stage variant
    sharvet compress --ratio 0.5 --device cuda -o /tmp/c05
    python benchmarks/inference.py /tmp/c05 --shape llama3-8b --ratios 0.7,0.5,0.3,0.5:always

    python benchmarks/inference.py --shape llama3-8b --method basis-sharing --ratios 0.5   # Basis Sharing's plan
    python benchmarks/inference.py --shape tiny --device cpu --out /tmp/inference.json     # a CPU check in seconds
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sharvet.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(ROOT / "results" / "inference" / "summary.json")]
    sys.exit(main(["bench", *args]))
