"""The grouped decode kernels compiled ahead of time for a GPU this machine need not have, and what their code does.

Triton compiles for sm_90 (H100/H200) with the ptxas it ships, so a kernel's registers, spills and memory
instructions can be read on a CPU-only machine: before spending GPU time on a tile, and in tests (a tile that
spills, or weights read by narrow loads, fail there). The launch is compiled with the specialisations Triton's
launcher makes at run time for tensors from PyTorch's allocator: pointers and the input's row stride divisible by 16.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def load_bytes(instruction: str) -> int:
    """Bytes one PTX load moves: ``ld.global.v4.b32`` 16, ``ld.global.b16`` 2 (qualifiers ignored)."""
    parts = instruction.split(".")
    lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
    return lanes * int(parts[-1][1:]) // 8


@dataclass(frozen=True)
class KernelCode:
    """Resource use and global loads of one compiled kernel."""

    registers: int
    spill_bytes: int  # local memory per thread (0: everything stays in registers)
    loads: Counter  # bytes per load instruction -> how many the PTX holds

    @property
    def narrow_loads(self) -> int:
        """Loads of fewer than 16 bytes, apart from the 8-byte reads of the pointer tables."""
        return sum(n for width, n in self.loads.items() if width < 8)


def compile_ahead(*, tokens: int, split: int, first: bool, align: int, block_n: int, block_k: int, warps: int,
                  pdl: bool = False, ahead: bool | None = None, evict_first: bool | None = None, gated: bool = False,
                  arch: int = 90):
    """One launch of ``grouped._grouped_gemv`` as Triton compiles it for ``sm_<arch>`` (bf16 weights); ``ahead``
    defaults to ``pdl`` and ``evict_first`` to :data:`grouped.EVICT_FIRST`, as at run time; ``gated``: a gated MLP's
    gate and up as one second stage."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import grouped

    # a split first stage writes float32 parts; the second stage after it reads and sums them
    x_ty = "*fp32" if not first and split > 1 else "*bf16"
    y_ty = "*fp32" if first and split > 1 else "*bf16"
    signature = {"w_ptrs": "*i64", "n_sizes": "*i64", "k_sizes": "*i64", "block_starts": "*i64", "x_ptr": x_ty,
                 "x_offsets": "*i64", "s_ptrs": "*i64", "y_ptr": y_ty, "y_offsets": "*i64", "tokens": "i32",
                 "x_stride": "i32", "y_stride": "i32", "x_part_stride": "i32", "y_part_stride": "i32"}
    constants = {"G": 2 if gated else 3, "HAS_SCALE": first, "W_LIKE_X": first, "X_PARTS": 1 if first else split,
                 "BLOCK_M": grouped.block_m(tokens),
                 "BLOCK_N": block_n, "BLOCK_K": block_k, "ALIGN": align,
                 "AHEAD": pdl if ahead is None else ahead, "USE_PDL": pdl,
                 "EVICT_FIRST": grouped.EVICT_FIRST if evict_first is None else evict_first, "GATED": gated}
    signature.update(dict.fromkeys(constants, "constexpr"))
    names = grouped._grouped_gemv.arg_names
    divisible = [a for a in signature if signature[a].startswith("*")] + ["x_stride"]
    source = ASTSource(grouped._grouped_gemv, signature, {(names.index(k),): v for k, v in constants.items()},
                       {(names.index(a),): [["tt.divisibility", 16]] for a in divisible})
    options = {"num_warps": warps, **({"launch_pdl": True} if pdl else {})}
    return triton_compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def kernel_code(kernel) -> KernelCode:
    """Registers and spills (Triton's ``cuobjdump -res-usage``) and the PTX's global loads by width."""
    tools = Path(sys.modules["triton"].__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"LOCAL:(\d+)", usage).group(1)) + int(re.search(r"STACK:(\d+)", usage).group(1))
    loads = Counter(load_bytes(m) for m in re.findall(r"ld\.global\S*", kernel.asm["ptx"]))
    return KernelCode(registers, spills, loads)
