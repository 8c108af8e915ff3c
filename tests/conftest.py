"""Shared fixtures: small demo archives built once per session, and isolated cache/index folders."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest

# Keep every test run away from the user's cache: demo archives and indexes go to a temp folder.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlcast-pipes-tests-"))
os.environ.setdefault("MLCAST_PIPES_CACHE", str(_SESSION_DIR / "cache"))
os.environ.setdefault("MLCAST_PIPES_INDEX_DIR", str(_SESSION_DIR / "index"))
warnings.filterwarnings("ignore", message=r"(?s).*deprecated", category=UserWarning)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo archive (256x256, two events with a gap), generated once per session."""
    from mlcast_pipes.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "tiny.zarr", preset="tiny", seed=0)


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    """A fresh folder for index files."""
    path = tmp_path / "index"
    path.mkdir()
    return path
