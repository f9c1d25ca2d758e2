"""The compression plan: which layers share a basis, at which rank, stored in the checkpoint's config."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .allocation import LayerLayout

FORMAT_VERSION = 1


@dataclass
class GroupPlan:
    type: str
    layers: list[int]
    rank: int


@dataclass
class CompressionPlan:
    method: str
    ratio: float
    layout: LayerLayout
    groups: list[GroupPlan]
    settings: dict[str, Any] = field(default_factory=dict)

    def groups_of(self, type_name: str) -> list[GroupPlan]:
        return [g for g in self.groups if g.type == type_name]

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(g.type for g in self.groups))

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
