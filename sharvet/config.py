"""The compression config: everything that decides the compressed model, stored in its checkpoint.

``CompressionConfig.method`` names a preset of :mod:`sharvet.methods`, whose group kind
(:mod:`sharvet.kinds`) adds its own checks and says what calibration data it needs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import methods
from .allocation import LayerLayout
from .decomposition.sparse import FipsConfig
from .grouping import SIMILARITY_BASED, STRATEGIES
from .kinds import Kind, kind
from .similarity import SimilarityConfig

DECOMPOSITIONS = ("whitened", "plain")
ALLOCATIONS = ("adaptive", "uniform", "spectrum")


@dataclass
class CompressionConfig:
    """Everything that decides the compressed model; stored in the checkpoint for reproducibility."""

    ratio: float = 0.8
    method: str = "sharvet"
    grouping: str = "spectral"
    #: groups per shared module type; None = num_layers // 2 (the paper searches L/3 .. L/2)
    k: int | None = None
    allocation: str = "adaptive"
    mu: float = 0.9
    #: eq. 10 sums the pairwise similarities; the reference averages them. Mean is the default: with a
    #: sum, a group's share shrinks with the square of its size, starving exactly the large groups.
    eta_reduce: str = "mean"
    decomposition: str = "whitened"
    #: module types shared across layers; None = the adapter's default (the rest: per-layer SVD)
    shared_types: tuple[str, ...] | None = None
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    layout: LayerLayout = field(default_factory=LayerLayout)
    fips: FipsConfig = field(default_factory=FipsConfig)
    seed: int = 0

    @classmethod
    def preset(cls, method: str = "sharvet", variants: tuple[str, ...] = (), **explicit: Any) -> "CompressionConfig":
        """The method's preset, then the ablation variants, then every explicit (non-None) field."""
        fields = methods.preset_overrides(method, variants)
        sim = fields.pop("similarity", {})
        explicit = {k: v for k, v in explicit.items() if v is not None}
        if "similarity" in explicit:
            base = explicit.pop("similarity")
            sim = {**dataclasses.asdict(base), **sim} if isinstance(base, SimilarityConfig) else {**base, **sim}
        fields.update(explicit)
        return cls(method=method, similarity=SimilarityConfig(**sim), **fields)

    @property
    def kind(self) -> str:
        """How groups are stored: basis (SharVeT, Basis Sharing), dense (SEQ, CYCLE), sparse (FiPS)."""
        return methods.method(self.method).kind

    @property
    def group_kind(self) -> Kind:
        """The registered kind of :attr:`kind`: it plans, prices, builds and installs the groups."""
        return kind(self.kind)

    def validate(self, num_layers: int | None = None, type_names: list[str] | None = None) -> None:
        """Fail fast, with one clear line, before any heavy work."""
        if not 0 < self.ratio <= 1:
            raise ValueError(f"--ratio must be in (0, 1], got {self.ratio}")
        self.group_kind.validate(self)
        if self.fips.rank is not None and self.fips.rank < 1 or self.fips.steps < 0:
            raise ValueError("the FiPS basis size must be >= 1 and its steps >= 0")
        if self.grouping not in STRATEGIES:
            raise ValueError(f"unknown grouping {self.grouping!r}; choose from {', '.join(sorted(STRATEGIES))}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose from {', '.join(ALLOCATIONS)}")
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(f"unknown decomposition {self.decomposition!r}; choose from {', '.join(DECOMPOSITIONS)}")
        if self.eta_reduce not in ("mean", "sum"):
            raise ValueError(f"eta_reduce must be 'mean' or 'sum', got {self.eta_reduce!r}")
        if not 0 <= self.mu <= 1:
            raise ValueError(f"--mu must be in [0, 1], got {self.mu}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"--k must be at least 1, got {self.k}")
        if num_layers is not None and self.k is not None and self.k > num_layers:
            raise ValueError(f"--k {self.k} is larger than the number of layers ({num_layers})")
        if type_names is not None and self.shared_types is not None:
            unknown = sorted(set(self.shared_types) - set(type_names))
            if unknown:
                raise ValueError(f"unknown module types {unknown}; this model has {', '.join(type_names)}")

    def groups_per_type(self, num_layers: int) -> int:
        return self.k if self.k is not None else max(1, num_layers // 2)

    @property
    def needs_similarity(self) -> bool:
        return self.grouping in SIMILARITY_BASED or self.group_kind.needs_similarity(self)

    @property
    def needs_stats(self) -> bool:
        """Input statistics: whitened SVD / weighted mean, or CKA."""
        whitened = self.decomposition == "whitened" and self.group_kind.whitens
        return whitened or (self.needs_similarity and self.similarity.use_cka)

    @property
    def needs_ids(self) -> bool:
        """Calibration tokens themselves (FiPS refines on captured MLP-block inputs)."""
        return self.group_kind.needs_ids(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["similarity"]["cka_matmul"] == "ieee":  # added after format 1: written only when not the default
            del d["similarity"]["cka_matmul"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressionConfig":
        """The config of :meth:`to_dict` (unknown keys ignored; missing ones take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        nested = {"similarity": SimilarityConfig, "layout": LayerLayout, "fips": FipsConfig}
        for key, typ in nested.items():
            if isinstance(values.get(key), dict):
                values[key] = typ(**values[key])
        if values.get("shared_types") is not None:
            values["shared_types"] = tuple(values["shared_types"])
        return cls(**values)
