"""Figure (issue 17): speedups of ``sharvet bench`` records against the bytes bound, per ratio and phase.

    python benchmarks/plot_inference.py results/inference/summary.json --contains "ninth session" \
        -o docs/figures/inference_llama3_8b.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharvet.inference.plots import chosen, speed_figure  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("summary", help="a JSON file of sharvet bench records")
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--contains", default="", help="only records whose note or command contains this text")
    p.add_argument("--title", default="")
    p.add_argument("-o", "--out", required=True)
    a = p.parse_args()
    records = chosen(json.loads(Path(a.summary).read_text())["records"], shape=a.shape, contains=a.contains)
    if not records:
        raise SystemExit(f"no records of shape {a.shape!r} containing {a.contains!r} in {a.summary}")
    print(f"{len(records)} records -> {speed_figure(records, a.out, title=a.title)}")


if __name__ == "__main__":
    main()
