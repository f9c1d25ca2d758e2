"""The registry of group kinds: how each group of a plan is stored (see :mod:`.base`).

- ``basis`` (:mod:`.basis`): SharVeT / Basis Sharing, a shared low-rank basis and per-layer factors;
- ``dense`` (:mod:`.dense`): SEQ / CYCLE / CYCLE-REV, one whole matrix per set (or a module kept as it is);
- ``sparse`` (:mod:`.sparse`): FiPS, a basis over several types and sparse per-module projections.

A method (:mod:`sharvet.methods`) names its kind; a new family is a :class:`Kind` subclass plus one
:func:`register` call, and planning, pricing, building, saving and loading pick it up from here.
"""
from __future__ import annotations

from .base import GroupPlan, Kind
from .basis import BasisKind
from .dense import DenseKind
from .sparse import SparseKind

KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make ``kind`` available to plans by its name (replacing a kind of the same name)."""
    KINDS[kind.name] = kind
    return kind


def kind(name: str) -> Kind:
    if name not in KINDS:
        raise ValueError(f"unknown group kind {name!r}; registered: {', '.join(KINDS)}")
    return KINDS[name]


for _builtin in (BasisKind(), DenseKind(), SparseKind()):
    register(_builtin)

__all__ = ["GroupPlan", "KINDS", "Kind", "kind", "register"]
