"""Shared fixtures: the path of the real NYUv2 fixtures in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

# before any test imports torch: passive OpenMP waiting (see densemtl/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project root (real NYUv2 frames, see its SOURCE.md files)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real fixtures not found at {SHARED_DATA}; ../shared must sit beside the project")
    return SHARED_DATA
