"""Fixtures for the jaxnn.data tests."""

import os
from pathlib import Path

import pytest

from jaxnn.data.corpora import data_dir


@pytest.fixture(scope="session")
def shared_wheels() -> Path:
    """The real wheel cache ($JAXNN_DATA_DIR or ~/.cache/jaxnn)/wheels, created if missing."""
    wheels = data_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    return wheels


@pytest.fixture
def data_root(tmp_path: Path, shared_wheels: Path) -> Path:
    """A fresh cache root whose wheels/ points at the real wheel cache (so nothing is
    re-downloaded) while encoded caches go to a temporary folder."""
    root = tmp_path / "jaxnn-cache"
    root.mkdir()
    os.symlink(shared_wheels, root / "wheels")
    return root
