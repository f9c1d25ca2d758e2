"""argparse types for numeric flags: a bad value is one usage line and exit 2, before anything loads."""
from __future__ import annotations

import argparse


def at_least(low: int):
    """An argparse type: an integer >= ``low`` (a bad value is one usage line, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def in_range(low: float, high: float, low_open: bool = True):
    """An argparse type: a float in ``(low, high]`` (or ``[low, high]``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or not value <= high or value != value:
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low}, {high}], got {text}")
        return value
    parse.__name__ = "number"
    return parse
