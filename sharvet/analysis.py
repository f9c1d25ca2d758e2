"""Similarity of a model's layers without compressing it: what ``sharvet similarity`` and ``sharvet grouping``
(paper Figures 1 and 4) compute, callable from Python."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .api import CalibrationSpec, calibrate
from .loading import LoadedModel, load_original
from .models import adapter_for
from .similarity import SimilarityConfig, model_similarity


def model_similarities(model: str | None, similarity: SimilarityConfig, calibration: CalibrationSpec, *,
                       types: Sequence[str] | None = None, default_types: Callable[[Any], Sequence[str]] | None = None,
                       seed: int = 0, device: str | None = None, dtype: str | None = None,
                       progress: bool = True) -> tuple[LoadedModel, Any, dict[str, Any]]:
    """Load ``model`` (None: the bundled SmolLM2), calibrate if CKA is on, and compute the similarity of ``types``
    (default: ``default_types(adapter)``, else every module type). Returns the loaded model, its adapter and the
    similarities per type."""
    loaded = load_original(model, dtype=dtype, device=device)
    adapter = adapter_for(loaded.model)
    types = list(types) if types else list(default_types(adapter) if default_types else adapter.type_names)
    for t in types:
        adapter.module_type(t)  # an unknown type fails here, naming the known ones
    stats = calibrate(loaded, calibration, seed=seed, device=device, progress=progress) if similarity.use_cka else None
    sims = model_similarity(adapter, types, stats, similarity, device=device or "cpu", progress=progress)
    return loaded, adapter, sims
