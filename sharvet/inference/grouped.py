"""Grouped decode kernels: one launch for the first stages and one for the second stages of every compressed module
that reads the same input (q, k, v; gate, up; o and down alone), when a decode step carries a few tokens.

Why: a decode step of a compressed model is memory-bound, yet each module is two skinny GEMVs, so a layer launches
about twice dense's kernels on matrices 2-5x smaller, which cuBLAS serves at ~2.3 TB/s against dense's ~3.5
(``benchmarks/decode_profile.py``, H200, 2026-11-30). Here one Triton kernel computes every module's
``h_i = (x * lambda_i) U_i^T`` of a layer input, reading each (shared) basis where it lies through a table of
pointers (nothing is copied, unlike ``fuse="always"``), and a second one every ``y_i = h_i V_i^T``. lambda is
applied on the fly. Programs own ``BLOCK_N`` output rows each, so the small matrices of a layer fill the GPU
together.

Each weight tile is read once for all of a step's tokens (up to :data:`MAX_TOKENS`, one by default, as measured).
Longer steps (batches, prefill), CPU tensors, and machines without Triton take the modules' own forward (the
reference). ``TRITON_INTERPRET=1`` runs the kernels on the CPU (tests); ``grouped_aot`` compiles them for sm_90 without
a GPU, so their registers and load widths are checked there too.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..modules import SharedBasisLinear
from .chunked import chunked_forward, long_step
from .modules import SliceMemo

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch come without Triton: the reference forward runs instead
    triton = None
try:  # Hopper's grid dependency control (in Triton 3.6 and 3.9; older versions may lack it)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: ``SHARVET_GROUPED_PDL``: programmatic dependent launch (Hopper's grid dependency control), so a launch's
#: programs start, and read their first weight tile, while the launch before it finishes; they wait
#: (``griddepcontrol.wait``) only before reading its output. ``auto`` (default): on for sm_90 and newer
#: (:func:`pdl_on`; ``1``, its earlier opt-in, means the same); ``0``: off. Never in the interpreter (it cannot run
#: the PTX). On an H200 at LLaMA-3-8B shapes it took one token's matmuls at 0.5 from 1.20x / 1.31x dense to 1.42x /
#: 1.44x (tiles 4x1024x4 / 4x512x4), and the whole decode step from 1.24x to 1.26x at 0.5, 1.07x either way at 0.7
#: (norms and attention sit between most launches); the GPU tests pass with it, CUDA graphs included (2026-11-30,
#: ninth session).
PDL_MODE = os.environ.get("SHARVET_GROUPED_PDL", "auto").lower()
if PDL_MODE not in ("auto", "0", "1"):
    raise ValueError(f"SHARVET_GROUPED_PDL must be auto, 0 or 1, got {PDL_MODE!r}")
PDL = PDL_MODE != "0" and gdc_wait is not None and not INTERPRET
#: ``SHARVET_GROUPED_AHEAD=1``: read each tile's weights one iteration ahead, the first before any wait, without
#: PDL (with it, always: that is what lets a launch's first reads overlap the previous launch; the interpreter tests
#: use it alone). Costs registers: 80 / 72 against 63 / 63 (first / second stage, tile 4x1024x4, sm_90).
AHEAD = os.environ.get("SHARVET_GROUPED_AHEAD") == "1"
#: ``SHARVET_GROUPED_EVICT``: ``first`` (default): weights are loaded with the evict-first policy (PTX
#: ``L1::evict_first`` and an ``L2::evict_first`` cache policy), so that a launch streaming tens of MB of weights
#: read once leaves the step's small activations (residual stream, norm weights, KV rows) in L2 for the kernels
#: between launches; ``normal``: no policy. On an H200 at LLaMA-3-8B shapes the captured decode step went from 1.402x
#: to 1.422x dense at 0.5 (three processes with it, all 1.422x; the control in the same session), 1.18x -> 1.19x at
#: 0.7, 1.71x -> 1.73x at 0.3; profiled, the grouped kernels took 1.5 % less time and most of the small kernels
#: between them (norms, SiLU, rotary) 2-14 % less (fifteenth session, 2026-12-01).
EVICT_MODE = os.environ.get("SHARVET_GROUPED_EVICT", "first").lower()
if EVICT_MODE not in ("normal", "first"):
    raise ValueError(f"SHARVET_GROUPED_EVICT must be normal or first, got {EVICT_MODE!r}")
EVICT_FIRST = EVICT_MODE == "first"


#: ``SHARVET_GROUPED_GATED=1``: a gated MLP with SiLU (LLaMA's) runs a decode step's gate and up as one second
#: stage whose programs each own the same rows of both and store ``silu(gate) * up``, so the activation and the
#: product need no kernel of their own between the gate/up launch and down's (one launch fewer a layer; the
#: profile at 0.5 put that kernel at ~40 µs of a 4.05 ms step, PDL's overlap lost around it besides). Off (``0``)
#: by default, as measured: two alternating pairs of processes (H200, 2026-12-01) put the whole decode step at
#: 1.430x / 1.414x with it against 1.436x / 1.427x without at 0.5, 1.184x / 1.175x against 1.196x / 1.184x at 0.7,
#: and 1.758x / 1.735x against 1.751x / 1.722x at 0.3: slower where the targets are met, +0.4-0.8 % at 0.3.
GATED_MODE = os.environ.get("SHARVET_GROUPED_GATED", "0")
if GATED_MODE not in ("0", "1"):
    raise ValueError(f"SHARVET_GROUPED_GATED must be 0 or 1, got {GATED_MODE!r}")
GATED_MLP = GATED_MODE == "1"


def pdl_on(device: torch.device) -> bool:
    """Whether launches on ``device`` use programmatic dependent launch: allowed (:data:`PDL`), and an NVIDIA GPU of
    sm_90 or newer, where ``griddepcontrol`` exists (ROCm builds report their GPUs as ``cuda`` too, with
    capabilities such as 9.4 that mean something else)."""
    return (PDL and device.type == "cuda" and torch.version.hip is None
            and torch.cuda.get_device_capability(device)[0] >= 9)


def parse_tiles(text: str) -> tuple[int, int, int, int]:
    """Rows and columns of a program's weight tile, its warps, and how many programs split the first stage's long
    reduction (over the model width): ``SHARVET_GROUPED_TILES=NxKxW[xS]`` overrides them (a knob for tuning on new
    hardware; powers of two; ``S`` omitted: 1, ``auto``: :func:`first_stage_split`, returned as 0). Small row
    blocks, and a split reduction, give a layer's few thousand rows enough programs to keep every SM's memory
    pipeline busy; the parts of a split first stage are summed in float32 by the second stage as it reads them."""
    try:
        parts = text.lower().split("x")
        split = 0 if parts[-1] == "auto" and len(parts) == 4 else 1
        values = [int(v) for v in (parts[:3] if split == 0 else parts)]
        n, k, w, split = values if len(values) == 4 else (*values, split)
    except ValueError:
        raise ValueError(f"SHARVET_GROUPED_TILES must look like 8x512x4, 8x512x4x2 or 8x512x4xauto, "
                         f"got {text!r}") from None
    if any(v < 1 or v & (v - 1) for v in (n, k, w)) or split < 0 or split & (split - 1) or k < 16:
        raise ValueError(f"SHARVET_GROUPED_TILES needs powers of two, columns >= 16 (tl.dot), got {text!r}")
    return n, k, w, split


def parse_stage_tiles(text: str) -> dict[bool, tuple[int, int, int, int]]:
    """``SHARVET_GROUPED_TILES``: one tile for both stages (``8x512x4``), or the first stage's and the second's
    (``4x512x4/8x512x4``; only the first may split). Keyed by ``first_stage``. Why two: a layer's first stages have
    few rows (the ranks, ~600-2,500 at 8B shapes) over long reductions, its second stages many rows (the outputs,
    4,096-28,672) over short ones, so a row block that fills the GPU with programs in one may be too small in the
    other."""
    first, _, second = text.partition("/")
    tiles = {True: parse_tiles(first), False: parse_tiles(second or first)}
    if second and tiles[False][3] != 1:
        raise ValueError(f"SHARVET_GROUPED_TILES: only the first stage splits, got {text!r}")
    tiles[False] = (*tiles[False][:3], 1)
    return tiles


def tile_text(tile: tuple[int, int, int, int]) -> str:
    return "x".join(map(str, tile[:3]))


#: decode steps of up to this many tokens take the grouped kernels (``SHARVET_GROUPED_MAX_TOKENS``, at most 16).
#: One by default: on an H200 at LLaMA-3-8B shapes, 16-token steps ran at 0.29-0.51x dense against cuBLAS's 0.92x
#: (``benchmarks/grouped_gemv.py``, 2026-11-30), so a batch's decode step takes the modules' own forward.
MAX_TOKENS = int(os.environ.get("SHARVET_GROUPED_MAX_TOKENS", "1"))
if not 1 <= MAX_TOKENS <= 16:
    raise ValueError(f"SHARVET_GROUPED_MAX_TOKENS must be 1-16 (tl.dot tiles of 16 rows), got {MAX_TOKENS}")
#: First stages 2 rows x 1,024 columns, second stages 8 x 512, 4 warps each: with PDL on, one token's matmuls ran at
#: 1.59x / 1.23x / 2.16x dense at ratios 0.5 / 0.7 / 0.3 (bytes bounds 1.76x / 1.26x / 2.92x), the fastest of 14
#: tiles and pairs tried at 0.5 and 0.7 and within 2 % of the fastest at 0.3, against 8x512x4 for both stages'
#: 1.39x / 1.12x / 1.66x; the whole decode step 1.36x / 1.15x / 1.65x against 1.14x / 1.04x / 1.39x in the same run
#: (H200, LLaMA-3-8B shapes, ``benchmarks/grouped_gemv.py`` and ``benchmarks/inference.py``, 2026-11-30, tenth
#: session). Why: first stages have few rows (the ranks) over the model width, so small row blocks give them enough
#: programs (9 per SM at 56 registers against 8x512x4's 5 at 96); second stages have many rows over short rows.
TILES = parse_stage_tiles(os.environ.get("SHARVET_GROUPED_TILES", "2x1024x4/8x512x4"))
#: a first stage split ``auto`` aims at this many programs per SM (a heuristic; with the default tiles it made one
#: token's matmuls 7 % slower at 0.3 and 3 % at 0.5, H200, LLaMA-3-8B shapes, seventeenth session: not the default)
PROGRAMS_PER_SM = 16
#: ``SHARVET_GROUPED_MIN_PROGRAMS=N``: a one-token launch halves its tile's row block while it has fewer than N
#: programs per SM (0, the default: every launch of a stage takes its tile's rows). Why: one tile serves launches of
#: very different heights (at 8B shapes o's and down's second stages have 4,096 rows, gate+up's 28,672), and the
#: fastest first-stage tile was the one with the most programs (2 rows, tenth session). Measured on one token's
#: matmuls (H200, LLaMA-3-8B shapes): at 0.5, 4 changed nothing, 8 and 16 lost 10 % and 15 % (fifteenth session);
#: at 0.3, 4 gained 2.0 %, 8 and 16 lost 9.8 % and 16 % (seventeenth): off.
MIN_PROGRAMS = int(os.environ.get("SHARVET_GROUPED_MIN_PROGRAMS", "0"))
if MIN_PROGRAMS < 0:
    raise ValueError(f"SHARVET_GROUPED_MIN_PROGRAMS must be >= 0, got {MIN_PROGRAMS}")


def first_stage_split(programs: int, k: int, block_k: int, sms: int) -> int:
    """How many parts a first stage's reduction (length ``k``) is split into: doubled while the launch has fewer
    than :data:`PROGRAMS_PER_SM` programs per SM and every part still gets a tile of columns. A first stage over
    the model width often has only a few hundred programs (o, down), each walking 4-14 column tiles alone."""
    split = 1
    while programs * split < PROGRAMS_PER_SM * sms and 2 * split * block_k <= k:
        split *= 2
    return split


def row_block(rows: list[int], block_n: int, sms: int) -> int:
    """A one-token launch's rows per program: the tile's, halved while the launch (groups of ``rows`` rows) has
    fewer than :data:`MIN_PROGRAMS` programs per SM."""
    while MIN_PROGRAMS and block_n > 1 and sum(-(-r // block_n) for r in rows) < MIN_PROGRAMS * sms:
        block_n //= 2
    return block_n


def available() -> bool:
    return triton is not None


def describe() -> str:
    """The kernels' settings as a record states them (they come from the environment, so a run says which)."""
    split = "auto" if TILES[True][3] == 0 else str(TILES[True][3])
    missing = "" if triton is not None else " (no Triton: modules run their own forward)"
    first, second = tile_text(TILES[True]), tile_text(TILES[False])
    tiles = f"tile {first}" if first == second else f"tiles {first} (first stage) / {second} (second)"
    return (f"{tiles}, first-stage split {split}, steps of up to {MAX_TOKENS} token"
            f"{'s' if MAX_TOKENS > 1 else ''}, 16-byte loads where aligned"
            f"{f', row blocks halved to >= {MIN_PROGRAMS} programs per SM' if MIN_PROGRAMS else ''}"
            f"{', weights a tile ahead' if AHEAD else ''}{', weights evicted first from L2' if EVICT_FIRST else ''}"
            f"{', gated MLPs: silu(gate) * up in their second stage' if GATED_MLP else ''}"
            f"{', programmatic dependent launch (weights a tile ahead) on sm_90+' if PDL else ''}{missing}")


def block_m(tokens: int) -> int:
    """Token rows of a launch's tiles: 1 (a multiply-and-sum) for one token, else a power of two >= 16 (tl.dot)."""
    return 1 if tokens == 1 else max(16, 1 << (tokens - 1).bit_length())


if triton is not None:
    @triton.jit
    def _weight_tile(w, rows, k, n, cols, k_hi, EVICT_FIRST: tl.constexpr):
        """Rows ``rows`` x columns ``cols`` of a row-major weight of ``n`` rows and ``k`` columns, zero past ``n``
        and ``k_hi``; read once per step, so ``EVICT_FIRST`` lets L2 drop them first."""
        at, inside = w + rows[:, None] * k + cols[None, :], (rows[:, None] < n) & (cols[None, :] < k_hi)
        if EVICT_FIRST:
            return tl.load(at, mask=inside, other=0.0, eviction_policy="evict_first")
        return tl.load(at, mask=inside, other=0.0)

    @triton.jit
    def _group_operands(g, w_ptrs, n_sizes, k_sizes, x_ptr, x_offsets, s_ptrs, y_ptr,
                        W_LIKE_X: tl.constexpr, ALIGN: tl.constexpr):
        """Group ``g``'s rows, reduction length, input (``x`` at its offset), weights and scale (the weights' table
        if unscaled). The weights have ``x``'s dtype (``W_LIKE_X``: a first stage) or ``y``'s (a second stage).
        ``ALIGN`` > 1 (elements; the host checked it) tells the compiler that rows, tables' addresses and offsets
        are 16-byte aligned: values loaded from the tables carry no alignment of their own, and without it every
        weight is read by a 2-byte load instead of 16-byte ones."""
        w_ty = x_ptr.dtype.element_ty if W_LIKE_X else y_ptr.dtype.element_ty
        n = tl.load(n_sizes + g)
        k = tl.load(k_sizes + g)
        x_off = tl.load(x_offsets + g)
        w = tl.load(w_ptrs + g).to(tl.pointer_type(w_ty))
        s = tl.load(s_ptrs + g).to(tl.pointer_type(w_ty))
        if ALIGN > 1:  # on the pointers (bytes) and sizes (elements): a hint on the loaded integer is lost
            k = tl.multiple_of(k, ALIGN)
            x_off = tl.multiple_of(x_off, ALIGN)
            w = tl.multiple_of(w, 16)
            s = tl.multiple_of(s, 16)
        return n, k, x_ptr + x_off, w, s

    @triton.jit
    def _rows_times_x(w, s, x, n, k, rows, k_lo, k_hi, tokens, x_stride, x_part_stride, first_tile,
                      HAS_SCALE: tl.constexpr, X_PARTS: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, AHEAD: tl.constexpr, EVICT_FIRST: tl.constexpr):
        """float32 ``(BLOCK_M, BLOCK_N)``: ``W[rows, k_lo:k_hi] @ (x[t, k_lo:k_hi] * s)`` for every token ``t``. One
        token: a multiply-and-sum; several (``BLOCK_M`` >= 16, padded): ``tl.dot`` on tensor cores. ``X_PARTS`` > 1:
        ``x`` holds a split first stage's parts, summed as they are read. ``AHEAD``: weights read a tile ahead,
        ``first_tile`` (read by the caller before it waited for the previous launch) first."""
        t = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # one token: products summed elementwise in the loop and across threads once after it (a sum per tile
        # costs shared-memory barriers that stall the next tile's loads)
        acc1 = tl.zeros((BLOCK_N, BLOCK_K) if BLOCK_M == 1 else (1, 1), dtype=tl.float32)
        tile = tl.arange(0, BLOCK_K)
        ahead = first_tile
        for k0 in range(k_lo, k_hi, BLOCK_K):
            cols = k0 + tile
            at = x + t[:, None] * x_stride + cols[None, :]
            inside = (t[:, None] < tokens) & (cols[None, :] < k_hi)
            xv = tl.load(at, mask=inside, other=0.0).to(tl.float32)
            for part in tl.static_range(1, X_PARTS):
                xv += tl.load(at + part * x_part_stride, mask=inside, other=0.0).to(tl.float32)
            if HAS_SCALE:
                xv = xv * tl.load(s + cols, mask=cols < k_hi, other=0.0).to(tl.float32)[None, :]
            if AHEAD:
                wv = ahead
            else:
                wv = _weight_tile(w, rows, k, n, cols, k_hi, EVICT_FIRST)
            if BLOCK_M == 1:
                acc1 += wv.to(tl.float32) * xv
            else:
                acc += tl.dot(xv.to(wv.dtype), tl.trans(wv), input_precision="ieee")
            if AHEAD:  # the next tile, one iteration ahead (past k_hi on the last: fully masked, nothing read)
                ahead = _weight_tile(w, rows, k, n, cols + BLOCK_K, k_hi, EVICT_FIRST)
        if BLOCK_M == 1:
            acc += tl.sum(acc1, axis=1)[None, :]
        return acc

    @triton.jit
    def _grouped_gemv(w_ptrs, n_sizes, k_sizes, block_starts, x_ptr, x_offsets, s_ptrs, y_ptr, y_offsets,
                      tokens, x_stride, y_stride, x_part_stride, y_part_stride,
                      G: tl.constexpr, HAS_SCALE: tl.constexpr, W_LIKE_X: tl.constexpr, X_PARTS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ALIGN: tl.constexpr,
                      AHEAD: tl.constexpr, USE_PDL: tl.constexpr, EVICT_FIRST: tl.constexpr, GATED: tl.constexpr):
        """``y[j, t, y_off_g + rows] = W_g[rows, part j] @ (x[t, x_off_g + part j] * s_g)`` for every token ``t``
        and the group ``g`` owning this program's rows, each weight tile read once for all tokens
        (:func:`_rows_times_x`). The second grid axis splits the reduction into parts ``j``, each stored in float32
        at ``y + j * y_part_stride`` (no atomics, no zeroing). ``GATED`` (a gated MLP's gate and up, groups 0 and
        1, as one second stage): every program owns the same rows of both and stores ``silu(gate) * up`` there, so
        the MLP's activation and product need no kernel of their own. ``USE_PDL`` (:data:`PDL`): the next launch
        may start once every program got here, and this one waits for the previous launch before reading ``x``;
        ``AHEAD`` (:data:`AHEAD`, always with PDL): the first weight tile is read before that wait."""
        pid = tl.program_id(0)
        g = 0
        if GATED:
            rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        else:
            for i in tl.static_range(1, G):
                g += (pid >= tl.load(block_starts + i)).to(tl.int32)
            rows = (pid - tl.load(block_starts + g)) * BLOCK_N + tl.arange(0, BLOCK_N)
        n, k, x, w, s = _group_operands(g, w_ptrs, n_sizes, k_sizes, x_ptr, x_offsets, s_ptrs, y_ptr, W_LIKE_X, ALIGN)
        chunk = tl.cdiv(tl.cdiv(k, tl.num_programs(1)), BLOCK_K) * BLOCK_K
        k_lo = tl.program_id(1) * chunk
        k_hi = tl.minimum(k, k_lo + chunk)
        tile = tl.arange(0, BLOCK_K)
        first_tile = 0
        if AHEAD:  # weights do not depend on the previous launch: read the first tile before waiting for it
            first_tile = _weight_tile(w, rows, k, n, k_lo + tile, k_hi, EVICT_FIRST)
        if USE_PDL:
            gdc_launch_dependents()
            gdc_wait()
        acc = _rows_times_x(w, s, x, n, k, rows, k_lo, k_hi, tokens, x_stride, x_part_stride, first_tile,
                            HAS_SCALE, X_PARTS, BLOCK_M, BLOCK_N, BLOCK_K, AHEAD, EVICT_FIRST)
        if GATED:  # up's rows (group 1, unsplit), then silu(gate) * up
            n1, k1, x1, w1, s1 = _group_operands(1, w_ptrs, n_sizes, k_sizes, x_ptr, x_offsets, s_ptrs, y_ptr,
                                                 W_LIKE_X, ALIGN)
            first_up = 0
            if AHEAD:
                first_up = _weight_tile(w1, rows, k1, n1, tile, k1, EVICT_FIRST)
            up = _rows_times_x(w1, s1, x1, n1, k1, rows, 0, k1, tokens, x_stride, x_part_stride, first_up,
                               HAS_SCALE, X_PARTS, BLOCK_M, BLOCK_N, BLOCK_K, AHEAD, EVICT_FIRST)
            acc = acc * tl.sigmoid(acc) * up
        t = tl.arange(0, BLOCK_M)
        out = y_ptr + tl.program_id(1) * y_part_stride + t[:, None] * y_stride + tl.load(y_offsets + g) + rows[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(t[:, None] < tokens) & (rows[None, :] < n))

    @torch.library.custom_op("sharvet::grouped_gemv", mutates_args=())
    def grouped_gemv(x: torch.Tensor, w: torch.Tensor, n: torch.Tensor, k: torch.Tensor, starts: torch.Tensor,
                     x_off: torch.Tensor, s: torch.Tensor, y_off: torch.Tensor, rows: int, groups: int, scaled: bool,
                     first_stage: bool, split: int, dtype: torch.dtype, launch: list[int]) -> torch.Tensor:
        """One grouped launch as an operator ``torch.compile`` keeps whole (it does not trace into Triton, and CUDA
        graphs record the launch); ``launch`` = programs, rows and columns per tile, warps, alignment, read-ahead
        (0/1), programmatic dependent launch (0/1), weights evicted first (0/1) and gated (0/1: a gated MLP's
        gate and up as one second stage that stores ``silu(gate) * up``). ``x`` is ``(tokens, width)``, or
        ``(parts, tokens, width)`` float32 parts of a split first stage; the output is ``(tokens, rows)`` in
        ``dtype``, or ``(split, tokens, rows)`` float32 parts when ``split`` > 1."""
        programs, block_n, block_k, warps, align, ahead, pdl, evict, gated = launch
        parts = x.shape[0] if x.dim() == 3 else 1
        tokens = x.shape[-2]
        if split > 1:
            y = torch.empty(split, tokens, rows, dtype=torch.float32, device=x.device)
        else:
            y = torch.empty(tokens, rows, dtype=dtype, device=x.device)
        _grouped_gemv[(programs, split)](w, n, k, starts, x, x_off, s, y, y_off, tokens, x.stride(-2), rows,
                                         x.stride(0) if parts > 1 else 0, y.stride(0) if split > 1 else 0,
                                         G=groups, HAS_SCALE=scaled, W_LIKE_X=first_stage, X_PARTS=parts,
                                         BLOCK_M=block_m(tokens), BLOCK_N=block_n, BLOCK_K=block_k, ALIGN=align,
                                         AHEAD=bool(ahead), USE_PDL=bool(pdl), EVICT_FIRST=bool(evict),
                                         GATED=bool(gated), num_warps=warps,
                                         **({"launch_pdl": True} if pdl else {}))
        return y

    @grouped_gemv.register_fake
    def _(x, w, n, k, starts, x_off, s, y_off, rows, groups, scaled, first_stage, split, dtype, launch):  # noqa: ANN
        if split > 1:
            return x.new_empty(split, x.shape[-2], rows, dtype=torch.float32)
        return x.new_empty(x.shape[-2], rows, dtype=dtype)


def alignment(weights: list[torch.Tensor], scales: list[torch.Tensor] | None, x_offsets: list[int]) -> int:
    """The kernel's ``ALIGN``: elements in 16 bytes when every weight and scale starts on 16 bytes, every row's
    length and every input offset is a multiple of that (ranks are padded to 8 by the inference form), else 1."""
    vec = max(1, 16 // weights[0].element_size())
    addresses = [t.data_ptr() for t in weights + list(scales or [])]
    aligned = (all(a % 16 == 0 for a in addresses) and all(w.shape[1] % vec == 0 for w in weights)
               and all(o % vec == 0 for o in x_offsets))
    return vec if aligned else 1


def device_tables(device: torch.device, *tables: list[int]) -> tuple[torch.Tensor, ...]:
    """int64 tables as views of one device tensor. Each tensor of its own would take at least the caching
    allocator's 512 bytes, and a model's launches hold thousands of tables of a few entries: about 1 MiB at
    LLaMA-3-8B shapes, above what the weights store."""
    flat = torch.tensor([v for values in tables for v in values], dtype=torch.int64, device=device)
    return flat.split([len(values) for values in tables])


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for s in sizes:
        out.append(total)
        total += s
    return out


def _layouts(weights: list[torch.Tensor], first_stage: bool, sms: int) -> list[tuple]:
    """(several tokens, rows per tile, columns per tile, programs per group, split of the reduction) for one token
    and for several: ``tl.dot`` needs tiles of at least 16 rows; a 16-token tile of 512 columns spills registers on
    sm_90, and so does summing 4 parts of 16 x 128. Only one-token first stages split."""
    tile_n, tile_k, _, split_k = TILES[first_stage]
    width = max(w.shape[1] for w in weights)
    out = []
    for several, block_n, block_k in ((False, row_block([w.shape[0] for w in weights], tile_n, sms), tile_k),
                                      (True, max(16, tile_n), min(tile_k, 128))):
        blocks = [-(-w.shape[0] // block_n) for w in weights]
        split = 1 if several or not first_stage else split_k or first_stage_split(sum(blocks), width, block_k, sms)
        out.append((several, block_n, block_k, blocks, split))
    return out


class _Launch:
    """One grouped GEMV: the weights' pointer table and sizes (int64 tensors on the weights' device), the grid.
    Its output is in the weights' dtype, or, for a split first stage, float32 parts that the second stage sums.
    ``gated``: two second stages of equal height (a gated MLP's gate and up) whose programs each own the same rows
    of both, storing ``silu(gate) * up``: one output of that height."""

    def __init__(self, weights: list[torch.Tensor], scales: list[torch.Tensor] | None, x_offsets: list[int],
                 *, first_stage: bool, gated: bool = False) -> None:
        if gated and (first_stage or len(weights) != 2 or weights[0].shape[0] != weights[1].shape[0]):
            raise ValueError("a gated launch is the second stage of two modules of equal height (gate, up)")
        device = weights[0].device
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        self.warps = TILES[first_stage][2]
        layouts = _layouts(weights, first_stage, sms)
        sizes, pointers = [w.shape[0] for w in weights], [w.data_ptr() for w in weights]
        tables = device_tables(device, pointers, [s.data_ptr() for s in scales] if scales else pointers, sizes,
                               [w.shape[1] for w in weights], x_offsets, _offsets(sizes),
                               *[_offsets(blocks) for _, _, _, blocks, _ in layouts])
        self.w, self.s, self.n, self.k, self.x_off, self.y_off, *starts = tables
        #: per step kind (several tokens or one): rows and columns per tile, programs, each group's first program,
        #: and the split of the reduction
        self.layouts = {several: (block_n, block_k, blocks[0] if gated else sum(blocks), table, split)
                        for (several, block_n, block_k, blocks, split), table in zip(layouts, starts)}
        self.rows = weights[0].shape[0] if gated else sum(w.shape[0] for w in weights)
        self.groups, self.scaled, self.gated = len(weights), bool(scales), gated
        self.dtype, self.first_stage = weights[0].dtype, first_stage
        self.align = alignment(weights, scales, x_offsets)
        self.pdl = pdl_on(device)
        self.ahead = AHEAD or self.pdl

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block_n, block_k, programs, starts, split = self.layouts[x.shape[-2] > 1]
        return torch.ops.sharvet.grouped_gemv(x, self.w, self.n, self.k, starts, self.x_off, self.s, self.y_off,
                                              self.rows, self.groups, self.scaled, self.first_stage, split,
                                              self.dtype, [programs, block_n, block_k, self.warps, self.align,
                                                           int(self.ahead), int(self.pdl), int(EVICT_FIRST),
                                                           int(self.gated)])


class GroupedStages(nn.Module):
    """The compressed modules reading one input of one layer, run by two grouped launches for a decode step.

    Holds the modules themselves (their parameters stay where they are, shared bases included); the pointer tables
    are rebuilt whenever the module is moved (``_apply``), so they never point at freed memory."""

    def __init__(self, modules: list[SharedBasisLinear], *, gated: bool = False) -> None:
        """``gated``: ``modules`` are a gated MLP's gate and up (SiLU, no bias), also run by :meth:`gated_product`."""
        super().__init__()
        if gated and (len(modules) != 2 or any(m.bias is not None for m in modules)):
            raise ValueError("a gated pair is two modules without bias (gate, up)")
        self.parts = nn.ModuleList(modules)
        self.gated = gated
        self._memo = SliceMemo(len(modules))
        self.rebuild()

    def rebuild(self) -> None:
        """The pointer tables, from where the weights lie now."""
        mods = list(self.parts)
        for m in mods:  # the kernels index rows by ``row * k``: contiguous storage
            m.basis.data, m.v.data = m.basis.data.contiguous(), m.v.data.contiguous()
        scales = None
        if any(m.scale is not None for m in mods):  # one table for all: ones where a module has no lambda
            ones = torch.ones(mods[0].in_features, dtype=mods[0].basis.dtype, device=mods[0].basis.device)
            scales = [ones if m.scale is None else m.scale for m in mods]
        self._scales = scales  # kept alive: the pointer table points at them
        self.first = _Launch([m.basis for m in mods], scales, [0] * len(mods), first_stage=True)
        vs, offsets = [m.v for m in mods], _offsets([m.rank for m in mods])
        self.second = _Launch(vs, None, offsets, first_stage=False)
        if self.gated:
            self.second_gated = _Launch(vs, None, offsets, first_stage=False, gated=True)
        self.sizes = [m.out_features for m in mods]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        out = super()._apply(fn, recurse)
        self.rebuild()
        return out

    def __setstate__(self, state: dict) -> None:  # a deep copy: its tables must point at its own tensors
        super().__setstate__(state)
        self.rebuild()

    def fast(self, x: torch.Tensor) -> bool:
        """A step of at most :data:`MAX_TOKENS` tokens (one by default: a decode step) on a GPU (or the Triton
        interpreter), in the weights' dtype; longer steps run as the modules' own cuBLAS matmuls."""
        return (triton is not None and (x.is_cuda or INTERPRET) and x.numel() <= MAX_TOKENS * x.shape[-1]
                and x.dtype == self.parts[0].basis.dtype)

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        """Every module's ``h = (x * lambda) U^T`` for ``x``'s tokens as rows (or a split's float32 parts)."""
        return self.first(x.reshape(-1, x.shape[-1]).contiguous())

    def _outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every module's ``y`` (bias not added) for ``x``, through the two launches."""
        return self.second(self._first(x)).split(self.sizes, dim=-1)

    def gated_product(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate(x)) * up(x)`` of a gated pair for a :meth:`fast` step, in two launches."""
        out = self.second_gated(self._first(x))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        out = self._memo.part(x, index, self._outputs)
        bias = self.parts[index].bias
        out = out if bias is None else out + bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


class GroupedSlice(nn.Module):
    """One compressed module of a :class:`GroupedStages`: grouped kernels for a decode step, chunks of tokens for a
    long prefill (:mod:`.chunked`), its own forward else."""

    def __init__(self, group: GroupedStages, index: int) -> None:
        super().__init__()
        self.group, self.index = group, index
        module = group.parts[index]
        self.in_features, self.out_features = module.in_features, module.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group.fast(x):
            return self.group.part(x, self.index)
        module = self.group.parts[self.index]
        return chunked_forward(module, x) if long_step(x) else module(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, slice={self.index}"


class GroupedGatedMLP(nn.Module):
    """A gated MLP, ``down(silu(gate(x)) * up(x))``, whose decode steps take its gate and up's gated launch
    (:meth:`GroupedStages.gated_product`) and then ``down``; other steps run the MLP as it was."""

    def __init__(self, mlp: nn.Module, gate_up: GroupedStages, down: nn.Module) -> None:
        super().__init__()
        if not gate_up.gated:
            raise ValueError("GroupedGatedMLP needs a gated GroupedStages (gate, up)")
        self.mlp = mlp
        self._stages = (gate_up, down)  # modules inside ``mlp``: a tuple, so they are not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._stages
        return down(gate_up.gated_product(x)) if gate_up.fast(x) else self.mlp(x)
