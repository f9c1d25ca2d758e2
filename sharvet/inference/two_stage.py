"""Both stages of a layer input's grouped decode kernels in one launch (``SHARVET_GROUPED_FUSED=1``, opt-in).

Why: at ratio 0.3 the grouped kernels of an 8B-shaped decode step move their weights at ~2.1 TB/s against cuBLAS's
3.3 for dense's (sixteenth session's profile): a layer's eight launches are small (~5-75 MB), and each one's ramp
and tail cost about as much as its reads. Here the first stages' programs (``h = (x * lambda) U^T``) come first in
one grid and the second stages' (``y = h V^T``) after them; a second-stage program reads its first weight tile, then
waits until every first-stage program of its group has stored its rows of ``h`` (a counter per group, raised with
release semantics, polled with acquire), so a layer input's two stages overlap instead of draining the GPU between
them. The last second-stage program sets the counters back to zero, so a CUDA graph replays the launch as it is.

The wait assumes that a grid's programs are dispatched in order of their index (first stages before second stages),
as CUDA's block scheduler does and decoupled look-back scans rely on; a second-stage program never waits for a
program dispatched after it. In Triton's interpreter programs run one after another in that order, so there the wait
is a check (a wrong count raises instead of hanging). One launch object must not run on two streams at once.
"""
from __future__ import annotations

import torch

import os

from . import grouped
from .grouped import _Launch, block_m, device_tables, triton

#: ``SHARVET_GROUPED_PAUSE_NS``: nanoseconds a waiting second-stage program sleeps between polls of its counter
#: (0: it polls without pause). Not yet measured.
PAUSE_NS = int(os.environ.get("SHARVET_GROUPED_PAUSE_NS", "200"))
if not 0 <= PAUSE_NS <= 1_000_000:
    raise ValueError(f"SHARVET_GROUPED_PAUSE_NS must be 0-1000000, got {PAUSE_NS}")

if triton is not None:
    import triton.language as tl

    from .grouped import _group_operands, _rows_times_x, _weight_tile, gdc_launch_dependents, gdc_wait

    @triton.jit
    def _group_of(p, starts, G: tl.constexpr):
        """The group owning program ``p`` of a stage whose groups start at programs ``starts``."""
        g = 0
        for i in tl.static_range(1, G):
            g += (p >= tl.load(starts + i)).to(tl.int32)
        return g

    @triton.jit
    def _pause(ns):
        """Sleep about ``ns`` nanoseconds (PTX ``nanosleep``): a waiting program polls its counter's L2 line less
        often, leaving that slice's bandwidth to the weights streaming past it."""
        return tl.inline_asm_elementwise("nanosleep.u32 $1;\n mov.u32 $0, $1;", "=r,r", [ns], dtype=tl.int32,
                                         is_pure=False, pack=1)

    @triton.jit
    def _first_stage(pid, w_ptrs, n_sizes, k_sizes, starts, x_offsets, s_ptrs, h_offsets, counters, x_ptr, h_ptr,
                     tokens, x_stride, h_stride, h_part_stride, programs, G: tl.constexpr, HAS_SCALE: tl.constexpr,
                     SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     ALIGN: tl.constexpr, USE_PDL: tl.constexpr, EVICT_FIRST: tl.constexpr):
        """First-stage program ``pid``, as ``grouped._grouped_gemv`` runs it (part ``pid // programs`` of a split
        reduction): stores its rows of ``h``, then raises its group's counter (release: after every thread's
        stores)."""
        part = pid // programs
        p = pid - part * programs
        g = _group_of(p, starts, G)
        rows = (p - tl.load(starts + g)) * BLOCK_N + tl.arange(0, BLOCK_N)
        n, k, x, w, s = _group_operands(g, w_ptrs, n_sizes, k_sizes, x_ptr, x_offsets, s_ptrs, x_ptr, True, ALIGN)
        chunk = tl.cdiv(tl.cdiv(k, SPLIT), BLOCK_K) * BLOCK_K
        k_lo = part * chunk
        k_hi = tl.minimum(k, k_lo + chunk)
        first_tile = _weight_tile(w, rows, k, n, k_lo + tl.arange(0, BLOCK_K), k_hi, EVICT_FIRST)
        if USE_PDL:
            gdc_launch_dependents()
            gdc_wait()
        acc = _rows_times_x(w, s, x, n, k, rows, k_lo, k_hi, tokens, x_stride, 0, first_tile,
                            HAS_SCALE, 1, BLOCK_M, BLOCK_N, BLOCK_K, True, EVICT_FIRST, "")
        t = tl.arange(0, BLOCK_M)
        out = h_ptr + part * h_part_stride + t[:, None] * h_stride + tl.load(h_offsets + g) + rows[None, :]
        tl.store(out, acc.to(h_ptr.dtype.element_ty), mask=(t[:, None] < tokens) & (rows[None, :] < n))
        tl.debug_barrier()
        tl.atomic_add(counters + g, 1, sem="release", scope="gpu")

    @triton.jit
    def _second_stage(p, w_ptrs, n_sizes, k_sizes, starts, h_offsets, y_offsets, expected, counters, h_ptr, y_ptr,
                      tokens, h_stride, y_stride, h_part_stride, programs, G: tl.constexpr, SPLIT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ALIGN: tl.constexpr,
                      USE_PDL: tl.constexpr, EVICT_FIRST: tl.constexpr, SPIN: tl.constexpr, PAUSE_NS: tl.constexpr):
        """Second-stage program ``p``: reads its first weight tile, waits (acquire) until its group's ``expected``
        first-stage programs have counted, then reads ``h`` through L2 only (another program's line of ``h`` may
        sit stale in this SM's L1). The last one to finish sets the counters back to zero. ``SPIN`` false (the
        interpreter, where every first stage ran before): a count short of ``expected`` is added up in
        ``counters[G + 1]`` instead of waited for."""
        g = _group_of(p, starts, G)
        rows = (p - tl.load(starts + g)) * BLOCK_N + tl.arange(0, BLOCK_N)
        n, k, h, w, _ = _group_operands(g, w_ptrs, n_sizes, k_sizes, h_ptr, h_offsets, w_ptrs, y_ptr, False, ALIGN)
        first_tile = _weight_tile(w, rows, k, n, tl.arange(0, BLOCK_K), k, EVICT_FIRST)
        if USE_PDL:  # y may lie where the previous launch still reads
            gdc_launch_dependents()
            gdc_wait()
        target = tl.load(expected + g)
        if SPIN:
            while tl.atomic_add(counters + g, 0, sem="acquire", scope="gpu") < target:
                if PAUSE_NS > 0:
                    _pause(PAUSE_NS)
        elif tl.atomic_add(counters + g, 0) != target:
            tl.atomic_add(counters + G + 1, 1)
        tl.debug_barrier()  # no thread reads h before the acquire
        acc = _rows_times_x(w, w, h, n, k, rows, 0, k, tokens, h_stride, h_part_stride, first_tile,
                            False, SPLIT, BLOCK_M, BLOCK_N, BLOCK_K, True, EVICT_FIRST, ".cg")
        t = tl.arange(0, BLOCK_M)
        out = y_ptr + t[:, None] * y_stride + tl.load(y_offsets + g) + rows[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(t[:, None] < tokens) & (rows[None, :] < n))
        if tl.atomic_add(counters + G, 1, sem="relaxed", scope="gpu") == programs - 1:
            for i in tl.static_range(G + 1):  # every wait has passed
                tl.atomic_xchg(counters + i, 0, sem="relaxed", scope="gpu")

    @triton.jit
    def _two_stage_gemv(w1_ptrs, n1_sizes, k1_sizes, starts1, x_offsets, s_ptrs, h_offsets,
                        w2_ptrs, n2_sizes, k2_sizes, starts2, y_offsets, expected, counters,
                        x_ptr, h_ptr, y_ptr, tokens, x_stride, h_stride, y_stride, h_part_stride,
                        programs1, programs2,
                        G: tl.constexpr, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N1: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_N2: tl.constexpr,
                        BLOCK_K2: tl.constexpr, ALIGN: tl.constexpr, USE_PDL: tl.constexpr,
                        EVICT_FIRST: tl.constexpr, SPIN: tl.constexpr, PAUSE_NS: tl.constexpr):
        """Programs ``[0, programs1 * SPLIT)`` run the first stages (:func:`_first_stage`), the programs after
        them the second stages (:func:`_second_stage`); weights are read a tile ahead, the first before any
        wait."""
        pid = tl.program_id(0)
        if pid < programs1 * SPLIT:
            _first_stage(pid, w1_ptrs, n1_sizes, k1_sizes, starts1, x_offsets, s_ptrs, h_offsets, counters, x_ptr,
                         h_ptr, tokens, x_stride, h_stride, h_part_stride, programs1, G, HAS_SCALE, SPLIT, BLOCK_M,
                         BLOCK_N1, BLOCK_K1, ALIGN, USE_PDL, EVICT_FIRST)
        else:
            _second_stage(pid - programs1 * SPLIT, w2_ptrs, n2_sizes, k2_sizes, starts2, h_offsets, y_offsets,
                          expected, counters, h_ptr, y_ptr, tokens, h_stride, y_stride, h_part_stride, programs2,
                          G, SPLIT, BLOCK_M, BLOCK_N2, BLOCK_K2, ALIGN, USE_PDL, EVICT_FIRST, SPIN, PAUSE_NS)

    @torch.library.custom_op("sharvet::grouped_two_stage", mutates_args=())
    def grouped_two_stage(x: torch.Tensor, tables: list[torch.Tensor], rows1: int, rows2: int, groups: int,
                          scaled: bool, split: int, dtype: torch.dtype, launch: list[int]) -> torch.Tensor:
        """Both stages as one operator ``torch.compile`` keeps whole; ``tables``: the first stage's weights, sizes,
        program starts, input offsets, scales and output offsets, the second stage's weights, sizes, program starts
        and output offsets, each group's first-stage program count, and the counters (which the launch leaves at
        zero, hence no declared mutation). ``launch``: programs of each stage, rows and columns per tile of each,
        warps, alignment, programmatic dependent launch (0/1), weights evicted first (0/1)."""
        programs1, programs2, block_n1, block_k1, block_n2, block_k2, warps, align, pdl, evict = launch
        tokens = x.shape[0]
        h = torch.empty(split, tokens, rows1, dtype=torch.float32 if split > 1 else dtype, device=x.device)
        y = torch.empty(tokens, rows2, dtype=dtype, device=x.device)
        _two_stage_gemv[(programs1 * split + programs2,)](
            *tables, x, h, y, tokens, x.stride(0), h.stride(1), y.stride(0), h.stride(0), programs1, programs2,
            G=groups, HAS_SCALE=scaled, SPLIT=split, BLOCK_M=block_m(tokens), BLOCK_N1=block_n1, BLOCK_K1=block_k1,
            BLOCK_N2=block_n2, BLOCK_K2=block_k2, ALIGN=align, USE_PDL=bool(pdl), EVICT_FIRST=bool(evict),
            SPIN=not grouped.INTERPRET, PAUSE_NS=PAUSE_NS, num_warps=warps, **({"launch_pdl": True} if pdl else {}))
        if grouped.INTERPRET and tables[-1][-1]:
            raise RuntimeError("two-stage launch: second-stage programs ran before their first stages were counted")
        return y

    @grouped_two_stage.register_fake
    def _(x, tables, rows1, rows2, groups, scaled, split, dtype, launch):  # noqa: ANN
        return x.new_empty(x.shape[0], rows2, dtype=dtype)


class TwoStageLaunch:
    """The two grouped launches of a :class:`grouped.GroupedStages` (not gated) as one: their tables, each group's
    first-stage program count per step kind, and the counters (int32, one per group and one for finished second-stage
    programs, zero between launches, and the interpreter's count of failed waits)."""

    def __init__(self, first: _Launch, second: _Launch) -> None:
        if second.gated or not first.first_stage or first.groups != second.groups:
            raise ValueError("a two-stage launch joins a first stage and the plain second stage of the same modules")
        device = first.w.device
        self.expected = dict(zip((False, True), device_tables(
            device, *[[b * first.layouts[several][4] for b in first.blocks[several]] for several in (False, True)])))
        self.counters = torch.zeros(first.groups + 2, dtype=torch.int32, device=device)
        self.first, self.second = first, second
        self.warps = max(first.warps, second.warps)
        self.align = min(first.align, second.align)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` of every module (``(tokens, sum of outputs)``) for ``x`` of shape ``(tokens, width)``."""
        several = x.shape[0] > 1
        f, s = self.first, self.second
        block_n1, block_k1, programs1, starts1, split = f.layouts[several]
        block_n2, block_k2, programs2, starts2, _ = s.layouts[several]
        tables = [f.w, f.n, f.k, starts1, f.x_off, f.s, f.y_off, s.w, s.n, s.k, starts2, s.y_off,
                  self.expected[several], self.counters]
        return torch.ops.sharvet.grouped_two_stage(
            x, tables, f.rows, s.rows, f.groups, f.scaled, split, s.dtype,
            [programs1, programs2, block_n1, block_k1, block_n2, block_k2, self.warps, self.align, int(f.pdl),
             int(grouped.EVICT_FIRST)])
