"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The project's shared data folder: ``$SHARVET_DATA_DIR`` or ``<repo>/../shared/data``; skip if absent."""
    env = os.environ.get("SHARVET_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set SHARVET_DATA_DIR to run this test)")
    return path
