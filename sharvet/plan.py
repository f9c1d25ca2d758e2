"""The compression plan: which modules share what, at which size, stored in the checkpoint's config.

A group's ``kind`` (:mod:`sharvet.kinds`) says how its members are stored: ``basis`` (a shared low-rank
basis), ``dense`` (one whole matrix) or ``sparse`` (FiPS: a basis over several module types, ``type``
e.g. ``"gate+up+down"``, and a sparse projection per member with ``nnz[i]`` kept entries).

``config.json`` keeps the layout of format 1: the plan's ``settings`` are one flat object holding the
compression config's fields (``shared_types`` and ``k`` as realised) beside the entries of
:class:`PlanSettings`, so checkpoints written before the settings were typed load unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from .accounting import BudgetReport, ParameterReport
from .allocation import LayerLayout
from .config import CompressionConfig
from .kinds.base import GroupPlan

FORMAT_VERSION = 1


@dataclass
class PlanSettings:
    """How a plan was made and what it came to; written by planning, compress, the API and refinement."""

    #: the config the plan was made with, its ``shared_types`` resolved and ``k`` the realised groups per
    #: shared type (for whole-matrix sharing: the number of sets)
    config: CompressionConfig | None = None
    #: the plan priced by :func:`sharvet.budget.account` before anything was built
    budget: BudgetReport | None = None
    #: the built model counted by :mod:`sharvet.accounting` (refinement updates it after absorbing sigma)
    parameters: ParameterReport | None = None
    #: the source model of a compression run
    model_id: str | None = None
    calibration: dict[str, Any] | None = None
    wall_time_s: float | None = None
    #: seconds of each stage of a compression run (load, calibration, planning, decomposition)
    stage_seconds: dict[str, float] | None = None
    #: how the model was refined (:meth:`sharvet.refinement.RefineResult.record`)
    refinement: dict[str, Any] | None = None
    #: what a group kind recorded while building (FiPS: ``fips_reconstruction``), and any entry this
    #: version does not know, kept as read
    records: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat settings object of format 1 (entries that are None are left out)."""
        out: dict[str, Any] = self.config.to_dict() if self.config is not None else {}
        if out.get("shared_types") is not None:
            out["shared_types"] = list(out["shared_types"])
        if self.budget is not None:
            out["budget"] = self.budget.to_dict()
        out.update(self.records)
        if self.parameters is not None:
            out["parameters"] = self.parameters.to_dict()
        for key in ("model_id", "calibration", "wall_time_s", "stage_seconds", "refinement"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanSettings":
        config_keys = {f.name for f in dataclasses.fields(CompressionConfig)}
        typed = {"budget", "parameters", "model_id", "calibration", "wall_time_s", "stage_seconds", "refinement"}
        return cls(
            config=CompressionConfig.from_dict(d) if config_keys & d.keys() else None,
            budget=BudgetReport.from_dict(d["budget"]) if "budget" in d else None,
            parameters=ParameterReport.from_dict(d["parameters"]) if "parameters" in d else None,
            model_id=d.get("model_id"),
            calibration=d.get("calibration"),
            wall_time_s=d.get("wall_time_s"),
            stage_seconds=d.get("stage_seconds"),
            refinement=d.get("refinement"),
            records={k: v for k, v in d.items() if k not in config_keys | typed},
        )


@dataclass
class CompressionPlan:
    method: str
    ratio: float
    layout: LayerLayout
    groups: list[GroupPlan]
    settings: PlanSettings = field(default_factory=PlanSettings)

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
            "settings": self.settings.to_dict(),
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
            settings=PlanSettings.from_dict(d.get("settings", {})),
        )
