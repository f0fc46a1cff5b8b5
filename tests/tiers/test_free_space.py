"""FreeSpace: statvfs at most every max_age_s, this store's writes subtracted in whole blocks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvtier.tiers.disk import free_space
from kvtier.tiers.disk.free_space import FreeSpace
from tests.tiers.disk_support import make_block, make_key, open_store


class FakeStatvfs:
    def __init__(self, free_blocks: int, block: int = 4096) -> None:
        self.free_blocks, self.block, self.calls = free_blocks, block, 0

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls += 1
        return os.statvfs_result((self.block, self.block, 10**6, 10**6, self.free_blocks, 10**6, 10**6, 10**6, 0, 255))


def test_estimate_subtracts_own_writes_rounded_up_to_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStatvfs(free_blocks=100)
    monkeypatch.setattr(free_space.os, "statvfs", fake)
    space = FreeSpace("/x", max_age_s=3600)
    space.refresh_if_stale()
    assert space.estimate() == 100 * 4096
    space.wrote(4097)  # two blocks on disk
    space.wrote(1)
    assert space.estimate() == 97 * 4096
    space.refresh_if_stale()  # fresh: no syscall
    assert fake.calls == 1
    fake.free_blocks = 90
    assert space.refresh() == 90 * 4096 and space.estimate() == 90 * 4096  # the reading includes our writes


def test_stale_reading_is_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStatvfs(free_blocks=10)
    monkeypatch.setattr(free_space.os, "statvfs", fake)
    space = FreeSpace("/x", max_age_s=0.0)
    space.refresh_if_stale()
    space.refresh_if_stale()
    assert fake.calls == 2


def test_puts_do_not_call_statvfs_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs
    calls: list[str] = []

    def counting(path: str) -> os.statvfs_result:
        calls.append(path)
        return real(path)

    store = open_store(tmp_path)  # NOTE: opening checks once that the filesystem is writable
    monkeypatch.setattr(free_space.os, "statvfs", counting)
    store._free_space.max_age_s = 3600  # one reading serves every put below
    for i in range(50):
        store.put(make_key(i), make_block(i))
    assert len(calls) == 1


def test_removed_files_give_their_blocks_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(free_space.os, "statvfs", FakeStatvfs(free_blocks=10))
    space = FreeSpace("/x", max_age_s=3600)
    space.refresh()
    space.wrote(3 * 4096)
    space.removed(4096 + 1)
    assert space.estimate() == 9 * 4096
