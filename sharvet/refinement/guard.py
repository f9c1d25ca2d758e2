"""The numerical guard: a diverged refinement stops with one clear error and never writes NaN or inf."""
from __future__ import annotations

from collections.abc import Iterable

import torch


class NonFiniteLossError(ValueError):
    """The loss or the gradient became NaN or infinite, or a model about to be saved holds such values.

    A ``ValueError``, so the command line reports it as a user error (a setting, usually the learning
    rate, is at fault) with a non-zero exit.
    """


def require_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse to write ``what`` if any of the ``(name, tensor)`` pairs holds a NaN or an infinity."""
    bad = [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteLossError(f"refusing to save the {what}: {len(bad)} tensors hold NaN or inf "
                                 f"(first: {bad[0]}); lower --lr and refine again")
