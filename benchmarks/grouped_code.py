"""Inspection (issue 17): the grouped decode kernels' code for an H100/H200, per tile, on a machine without a GPU.

Compiles each tile of ``--tiles`` ahead of time for sm_90 (``sharvet.inference.grouped_aot``) as a one-token
first stage (lambda applied) and second stage, and prints registers per thread, spilled bytes, the global loads by
width, and how many programs of that tile an SM can hold by registers (64 K registers, at most 64 warps and 32
programs per SM). A tile that spills, reads weights in narrow loads, or fits few programs per SM is a poor
candidate before any GPU time is spent on it; ``benchmarks/grouped_gemv.py`` measures the survivors.

The kernels are compiled as they run on sm_90: with programmatic dependent launch and the read-ahead it brings,
unless ``SHARVET_GROUPED_PDL=0`` (or ``--no-pdl``).

    python benchmarks/grouped_code.py --tiles 4x1024x4,8x512x4,8x1024x4 [--align 1] [--no-pdl]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharvet.inference.grouped import PDL, parse_stage_tiles  # noqa: E402
from sharvet.inference.grouped_aot import compile_ahead, kernel_code  # noqa: E402

#: sm_90's register file and residency limits per SM
REGISTERS, MAX_WARPS, MAX_PROGRAMS = 65536, 64, 32


def programs_per_sm(registers: int, warps: int) -> int:
    """Resident programs by registers (allocated per warp in units of 256) and by the warp and program limits."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(REGISTERS // (per_warp * warps), MAX_WARPS // warps, MAX_PROGRAMS)


def rows(tiles: list[str], align: int, pdl: bool = PDL) -> list[dict]:
    out = []
    for tile in tiles:
        stages = parse_stage_tiles(tile)
        for first in (True, False):
            block_n, block_k, warps, _ = stages[first]
            code = kernel_code(compile_ahead(tokens=1, split=1, first=first, align=align, block_n=block_n,
                                             block_k=block_k, warps=warps, pdl=pdl))
            out.append({"tile": tile, "stage": "first" if first else "second", "registers": code.registers,
                        "spill_bytes": code.spill_bytes, "loads": dict(sorted(code.loads.items())),
                        "narrow_loads": code.narrow_loads,
                        "programs_per_sm": programs_per_sm(code.registers, warps)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", default="4x1024x4,8x1024x4,4x2048x4,2x2048x4,8x512x4,4x512x4,8x2048x8,16x512x8")
    p.add_argument("--align", type=int, default=8, help="the kernel's ALIGN (8: 16-byte rows; 1: no alignment hint)")
    p.add_argument("--no-pdl", action="store_true", help="compile without programmatic dependent launch")
    a = p.parse_args()
    pdl = PDL and not a.no_pdl
    print(f"sm_90, one token, {'with' if pdl else 'without'} programmatic dependent launch")
    print("| tile | stage | registers | spilled bytes | loads (bytes: count) | narrow loads | programs / SM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows(a.tiles.split(","), a.align, pdl):
        loads = ", ".join(f"{w}: {n}" for w, n in r["loads"].items())
        print(f"| {r['tile']} | {r['stage']} | {r['registers']} | {r['spill_bytes']} | {loads} | "
              f"{r['narrow_loads']} | {r['programs_per_sm']} |")


if __name__ == "__main__":
    main()
