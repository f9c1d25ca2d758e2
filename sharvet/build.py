"""Turn a plan into modules: each group's kind decomposes its original weights and swaps it in.

Groups partition the model's (layer, type) modules, so a group reads only weights no other group
touches: each is decomposed and swapped in turn, keeping one group's factors in memory at a time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import torch
from tqdm.auto import tqdm

from .calibration import CalibrationStats
from .config import CompressionConfig
from .kinds import kind
from .models import ModelAdapter
from .plan import CompressionPlan


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Each group's float64 work matrices are freed once it is installed, but glibc keeps the pages, so
    they pile up into the process's peak: trimming after each group took a SmolLM2 compression's peak
    RSS from 2.7 to 1.9 GiB on CPU, at no measurable cost in time.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def build(adapter: ModelAdapter, plan: CompressionPlan, stats: CalibrationStats | None, cfg: CompressionConfig, *,
          prepared: Any, device: torch.device, progress: bool = True) -> dict[str, list[dict]]:
    """Decompose and install every group; returns what the kinds recorded, by settings entry.

    ``prepared`` is what the config's kind gathered from the uncompressed model (:meth:`Kind.prepare`).
    """
    records: dict[str, list[dict]] = {}
    whitened = cfg.decomposition == "whitened"
    bar = tqdm(plan.groups, desc="decomposition", unit="group", disable=not progress)
    for group in bar:
        spec = kind(group.kind)
        factors = spec.factors(adapter, group, stats, whitened, device)
        record = spec.build(adapter, group, plan.layout, factors, prepared, cfg)
        if record is not None and spec.record_key is not None:
            records.setdefault(spec.record_key, []).append(record)
            bar.set_postfix({k: v for k, v in record.items() if isinstance(v, float)})
        del factors
        release_freed_memory()
    return records
