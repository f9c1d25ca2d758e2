"""Error kinds the command line turns into one line and a documented exit code (docs/reliability.md).

- 0: everything asked for ran;
- 1: an unexpected internal error (a bug: rerun with ``SHARVET_DEBUG=1`` for the traceback);
- 2: bad input or a file that cannot be used (missing, damaged, not writable), reported before the work;
- 3: the run finished but some requested items did not run (their data is missing); the table is printed;
- 4: a numerical failure: a non-finite loss, gradient or perplexity;
- 130: interrupted (Ctrl-C); a resumable state is kept where the command supports ``--resume``.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_NOT_RUN = 3
EXIT_NON_FINITE = 4
EXIT_INTERRUPTED = 130


class NonFiniteError(ArithmeticError):
    """A loss, gradient, weight or metric that is NaN or infinite where a number was expected."""


class CheckpointError(ValueError):
    """A folder that is not a complete, unchanged sharvet checkpoint."""


def non_finite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
