"""Publishing objects as O_TMPFILE inodes linked into place, and the fallback to temporary names."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvtier.tiers import disk_tmpfile
from kvtier.tiers.disk_tmpfile import find_linker
from tests.tiers.disk_support import (
    make_block,
    make_key,
    object_files,
    open_store,
    same_bits,
)


@pytest.fixture
def linkable(tmp_path: Path) -> Path:
    if find_linker(str(tmp_path)) is None:
        pytest.skip("O_TMPFILE inodes cannot be linked here")
    return tmp_path


def test_put_publishes_without_any_temporary_name(linkable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(linkable)
    assert store._linker is not None
    renames: list[tuple[str, str]] = []
    monkeypatch.setattr(disk_tmpfile.os, "rename", lambda a, b: renames.append((a, b)))
    for i in range(5):
        store.put(make_key(i), make_block(i))
    assert renames == [] and len(object_files(linkable)) == 5 and not list(linkable.rglob("*.tmp"))
    assert all(same_bits(open_store(linkable).get(make_key(i)), make_block(i)) for i in range(5))


def test_unindexed_leftover_at_the_name_is_replaced_atomically(linkable: Path) -> None:
    store = open_store(linkable)
    key = make_key(7)
    path = Path(store.path_of(key.block_hash))
    path.write_bytes(b"a leftover the index never saw")  # e.g. copied in by hand after start
    store.put(key, make_block(7))
    assert same_bits(store.get(key), make_block(7)) and not list(linkable.rglob("*.tmp"))


def test_shared_folders_and_tmpfile_false_keep_temporary_names(linkable: Path) -> None:
    assert open_store(linkable / "shared", shared=True)._linker is None
    plain = open_store(linkable / "plain", tmpfile=False)
    assert plain._linker is None
    plain.put(make_key(1), make_block(1))
    assert same_bits(plain.get(make_key(1)), make_block(1))


def test_probe_falls_back_when_no_linking_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, path: str) -> None:
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(disk_tmpfile, "_link_empty_path", refuse)
    monkeypatch.setattr(disk_tmpfile, "_link_proc_fd", refuse)
    assert find_linker(str(tmp_path)) is None
    store = open_store(tmp_path)
    store.put(make_key(2), make_block(2))
    assert store._linker is None and same_bits(store.get(make_key(2)), make_block(2))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmpfile-probe")] == []
