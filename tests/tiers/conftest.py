"""Fixtures of the disk-tier tests: both file I/O twins, and a tier-like root to call them on."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtier.tiers.disk.fileio import FileIO, routines
from tests.tiers.disk_support import TWINS


@pytest.fixture(params=TWINS)
def io(request: pytest.FixtureRequest) -> FileIO:
    """The compiled file I/O, then its Python twin."""
    return routines(request.param)


@pytest.fixture
def root_fd(tmp_path: Path) -> Iterator[int]:
    """A tier-like root at tmp_path with one fan-out folder "f"."""
    (tmp_path / "f").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)
