"""A compressed model's many small weights in a few large allocations.

A compressed model holds hundreds of tensors of odd sizes (a rank times a width), where the dense model holds
fewer, rounder ones. A GPU caching allocator rounds each allocation up: PyTorch's keeps a large block whole when
splitting it would leave less than 1 MiB, so a tensor can hold up to a MiB it never uses. At LLaMA-3-8B shapes that
was 0.08-0.09 GiB above the stored bytes before the first forward (H200, 2026-11-30, the bench records'
``resident_gib_compressed``; dense: 0.00). :func:`pack_parameters` copies the weights into views of a few arenas,
filled largest first so that little is left to round. An arena is allocated at its exact size, not rounded up to the
driver's 2 MiB pages: the allocator then splits off a tail of more than 1 MiB for other tensors, where a rounded
arena would hold it unused (up to 2 MiB a model). With each grouped launch's tables in one allocation as well, the
compressed model holds 0.13 MiB beyond its stored weights after ``prepare`` (H200, 2026-12-01, ratio 0.5; 2.5 MiB
before).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: bytes per arena: at most this much is held twice while a model is packed
ARENA_BYTES = 1 << 30
#: every view starts at a multiple of this many bytes, the allocator's own granularity, so alignments that held for
#: separate allocations (the grouped kernels' 16-byte loads) still hold
ALIGN_BYTES = 512


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _distinct(params: Iterable[nn.Parameter]) -> dict[tuple, list[nn.Parameter]]:
    """Parameters by the memory they view (shared bases: one entry, however many modules hold them)."""
    out: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        if p.device.type == "meta":
            continue
        key = (p.device, p.dtype, p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride())
        entry = out.setdefault(key, [])
        if all(q is not p for q in entry):
            entry.append(p)
    return out


def _arena(entries: list[list[nn.Parameter]]) -> None:
    """One allocation holding ``entries`` (parameters of one device and dtype), each re-pointed at its view."""
    first = entries[0][0]
    item = first.element_size()
    offsets, total = [], 0
    for same in entries:
        offsets.append(total)
        total += _nbytes(same)
    arena = torch.empty(total // item, dtype=first.dtype, device=first.device)
    for offset, same in zip(offsets, entries):
        start = offset // item
        view = arena[start:start + same[0].numel()].view(same[0].shape)
        view.copy_(same[0].data)
        for p in same:
            p.data = view


def _nbytes(same: list[nn.Parameter]) -> int:
    return _round_up(same[0].numel() * same[0].element_size(), ALIGN_BYTES)


def _bins(entries: list[list[nn.Parameter]], capacity: int) -> list[list[list[nn.Parameter]]]:
    """First fit, largest first: the small tensors (lambdas, norms) fill the gaps the large ones leave, so every
    arena but the last is full to within a few KiB and little is left to round."""
    bins: list[list] = []  # [free bytes, members]
    for same in sorted(entries, key=_nbytes, reverse=True):
        size = _nbytes(same)
        home = next((b for b in bins if b[0] >= size), None)
        if home is None:
            home = [max(capacity, size), []]
            bins.append(home)
        home[0] -= size
        home[1].append(same)
    return [members for _, members in bins]


def pack_parameters(params: Iterable[nn.Parameter], arena_bytes: int = ARENA_BYTES) -> int:
    """Move the parameters' data into arenas of up to ``arena_bytes`` each (per device and dtype; a larger tensor
    gets one of its own) and return how many arenas were made. Values, shapes and sharing are unchanged; only where
    the data lies changes (so anything holding raw pointers, such as the grouped kernels' tables, must be rebuilt
    after)."""
    groups: dict[tuple, list[list[nn.Parameter]]] = {}
    for key, same in _distinct(params).items():
        groups.setdefault(key[:2], []).append(same)
    arenas = [members for entries in groups.values() for members in _bins(entries, arena_bytes)]
    for members in arenas:
        _arena(members)
    if any(device.type == "cuda" for device, _ in groups):
        torch.cuda.empty_cache()  # the separate allocations' blocks, now free, back to the driver
    return len(arenas)
