"""The numerical guard: a diverged refinement stops with one clear error and never writes NaN or inf."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import NonFiniteError, non_finite_names


class NonFiniteLossError(NonFiniteError, ValueError):
    """The loss or the gradient became NaN or infinite, or a model about to be saved holds such values.

    The command line reports it in one line with exit code 4 (a setting, usually the learning rate, is at fault).
    """


def require_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse to write ``what`` if any of the ``(name, tensor)`` pairs holds a NaN or an infinity."""
    bad = non_finite_names(named)
    if bad:
        raise NonFiniteLossError(f"refusing to save the {what}: {len(bad)} tensors hold NaN or inf "
                                 f"(first: {bad[0]}); lower --lr and refine again")
