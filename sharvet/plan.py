"""The compression plan: which modules share what, at which size, stored in the checkpoint's config.

A group's ``kind`` says how its members are stored:

- ``basis``: SharVeT / Basis Sharing -- one low-rank basis U of rank ``rank``, a V (and vectors) per layer;
- ``dense``: SEQ / CYCLE -- one whole weight matrix for every member (``rank`` unused); a group of one
  layer keeps that layer's weight as it is;
- ``sparse``: FiPS -- one basis of size ``rank`` over several module types (``type`` is e.g.
  ``"gate+up+down"``) and a sparse projection per member with ``nnz[i]`` kept entries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .allocation import LayerLayout

FORMAT_VERSION = 1


KINDS = ("basis", "dense", "sparse")


@dataclass
class GroupPlan:
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


@dataclass
class CompressionPlan:
    method: str
    ratio: float
    layout: LayerLayout
    groups: list[GroupPlan]
    settings: dict[str, Any] = field(default_factory=dict)

    def groups_of(self, type_name: str) -> list[GroupPlan]:
        return [g for g in self.groups if type_name in g.type_list]

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(t for g in self.groups for t in g.type_list))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "ratio": self.ratio,
            "layout": asdict(self.layout),
            "groups": [asdict(g) for g in self.groups],
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressionPlan":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported sharvet format version {d.get('format_version')!r}")
        return cls(
            method=d["method"],
            ratio=float(d["ratio"]),
            layout=LayerLayout(**d["layout"]),
            groups=[GroupPlan(**g) for g in d["groups"]],
            settings=dict(d.get("settings", {})),
        )
