"""What a group kind is: one way of storing a group of modules, from planning to loading.

A compression plan is a list of groups (:class:`GroupPlan`); a group's ``kind`` names the :class:`Kind`
that plans, prices, factors and installs it. The pipeline, the budget accountant, the checkpoint loader
and the summary only loop over groups and ask each group's kind (the registry is :mod:`sharvet.kinds`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..accounting import ModuleShape
from ..allocation import LayerLayout
from ..calibration import CalibrationStats
from ..decomposition.sparse import FipsConfig
from ..models import ModelAdapter
from ..similarity import TypeSimilarity


class PlanConfig(Protocol):
    """What a kind reads of the compression config (:class:`sharvet.config.CompressionConfig`).

    A protocol rather than the class itself: the config names its kind and asks it questions, so the
    kinds sit below it and must not import it.
    """

    ratio: float
    method: str
    grouping: str
    k: int | None
    allocation: str
    mu: float
    eta_reduce: str
    decomposition: str
    layout: LayerLayout
    fips: FipsConfig
    seed: int

    def groups_per_type(self, num_layers: int) -> int: ...


@dataclass
class GroupPlan:
    """One group of a plan: the modules ``type`` of ``layers``, stored together as a ``kind``."""

    type: str
    layers: list[int]
    rank: int
    kind: str = "basis"
    #: sparse groups: kept entries of each member's projection, in ``members`` order
    nnz: list[int] | None = None

    @property
    def type_list(self) -> list[str]:
        return self.type.split("+")

    @property
    def members(self) -> list[tuple[int, str]]:
        """(layer, type) of every module of the group, types outer, layers inner."""
        return [(layer, t) for t in self.type_list for layer in self.layers]


class Kind(ABC):
    """How a group is stored. A new method family is a subclass in one file plus one registration."""

    name: str
    #: a whitened decomposition reads the layers' input statistics (False: this kind ignores them)
    whitens: bool = True
    #: the settings entry :meth:`build` records go to (None: it records nothing)
    record_key: str | None = None

    def validate(self, cfg: PlanConfig) -> None:
        """Refuse settings this kind cannot honour (before any heavy work)."""

    def needs_similarity(self, cfg: PlanConfig) -> bool:
        """Whether planning needs layer similarity beyond what the grouping strategy needs."""
        return False

    def needs_ids(self, cfg: PlanConfig) -> bool:
        """Whether :meth:`prepare` needs the calibration token ids themselves."""
        return False

    @abstractmethod
    def plan(self, adapter: ModelAdapter, cfg: PlanConfig, shared: list[str],
             sims: dict[str, TypeSimilarity], stats: CalibrationStats | None = None) -> list[GroupPlan]:
        """Groups and sizes for every (layer, type) module, within ``cfg.ratio`` of the budget."""

    @abstractmethod
    def price(self, group: GroupPlan, shapes: dict[str, ModuleShape], layout: LayerLayout) -> int:
        """Numbers the built group stores (what :func:`sharvet.budget.account` sums)."""

    def prepare(self, adapter: ModelAdapter, cfg: PlanConfig, ids: torch.Tensor | None, *,
                device: torch.device, progress: bool) -> Any:
        """Inputs :meth:`build` needs from the uncompressed model, gathered before any group is swapped."""
        return None

    @abstractmethod
    def factors(self, adapter: ModelAdapter, group: GroupPlan, stats: CalibrationStats | None, whitened: bool,
                device: torch.device | str) -> Any:
        """The group's stored form computed from the original weights."""

    @abstractmethod
    def install(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, factors: Any) -> None:
        """Swap the group's modules in; ``factors`` None builds an empty skeleton (checkpoint loading).

        An installed module answers as an ``nn.Linear`` would: ``in_features``, ``out_features``, ``bias``
        and a dense ``weight`` (the adapter reads shapes and biases from them).
        """

    def build(self, adapter: ModelAdapter, group: GroupPlan, layout: LayerLayout, factors: Any, prepared: Any,
              cfg: PlanConfig) -> dict[str, Any] | None:
        """Install the group from its factors (a kind may refine it); returns a record for ``record_key``."""
        self.install(adapter, group, layout, factors)
        return None

    @abstractmethod
    def size_text(self, group: GroupPlan) -> str:
        """How the group is stored, in a few words (the summary's table)."""


def similarity_of(sims: dict[str, TypeSimilarity], type_name: str) -> torch.Tensor | None:
    return sims[type_name].joint if type_name in sims else None


def singletons(adapter: ModelAdapter, type_name: str, kind: str, rank: int = 0) -> list[GroupPlan]:
    """One group per layer: the module is kept on its own."""
    return [GroupPlan(type_name, [layer], rank, kind) for layer in range(adapter.num_layers)]


def like(adapter: ModelAdapter, group: GroupPlan) -> dict:
    """dtype and device of the modules a group replaces (an installed skeleton matches them)."""
    ref = adapter.get_module(*group.members[0])
    p = next(ref.parameters())
    return {"dtype": p.dtype if p.is_floating_point() else torch.float32, "device": adapter.home(*group.members[0])}


def bias_copy(adapter: ModelAdapter, layer: int, type_name: str) -> torch.Tensor | None:
    b = adapter.bias(layer, type_name)
    return None if b is None else b.clone()


def group_inputs(adapter: ModelAdapter, stats: CalibrationStats, group: GroupPlan,
                 device: torch.device | str) -> list[torch.Tensor]:
    """Every member layer's input second moment ``X^T X``."""
    key = adapter.module_type(group.type).input_key
    return [stats.get(layer, key).xtx.to(device) for layer in group.layers]
