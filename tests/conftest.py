"""Fixtures shared by all tests. GCS emulator fixtures live in conftest_gcs.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytest_plugins = ["conftest_gcs", "conftest_firestore"]


@pytest.fixture
def make_run(tmp_path: Path):
    """Generate a fake run folder: make_run(kind, size, seed=0, **kw) -> Path."""
    import make_fake_run

    def _make(kind: str = "miseq", size: int = 4 << 20, seed: int = 0, name: str | None = None, **kw):
        path = tmp_path / (name or f"240101_M00001_0001_000000000-{kind.upper()[:5]}")
        make_fake_run.make_run(path, kind, size, seed=seed, **kw)
        return path

    return _make
