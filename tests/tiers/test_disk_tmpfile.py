"""Publishing objects as O_TMPFILE inodes linked into place, and the fallback to temporary names."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvtier.tiers.disk import pyfileio
from tests.tiers.disk_support import (
    can_link_unnamed,
    make_block,
    make_key,
    object_files,
    open_store,
    same_bits,
)


@pytest.fixture
def linkable(tmp_path: Path) -> Path:
    if not can_link_unnamed(tmp_path):
        pytest.skip("O_TMPFILE inodes cannot be linked here")
    return tmp_path / "tier"


def test_put_publishes_without_any_temporary_name(linkable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(linkable, native_io=False)  # NOTE: the twin, so that a renamed write would be seen
    assert store.publishes_unnamed
    renamed: list[str] = []
    monkeypatch.setattr(pyfileio, "write_renamed", lambda *args: renamed.append(args[3]))
    for i in range(5):
        store.put(make_key(i), make_block(i))
    assert renamed == [] and len(object_files(linkable)) == 5 and not list(linkable.rglob("*.tmp"))
    assert all(same_bits(open_store(linkable).get(make_key(i)), make_block(i)) for i in range(5))


def test_unindexed_leftover_at_the_name_is_replaced_atomically(linkable: Path) -> None:
    store = open_store(linkable)
    key = make_key(7)
    path = Path(store.path_of(key.block_hash))
    path.write_bytes(b"a leftover the index never saw")  # e.g. copied in by hand after start
    store.put(key, make_block(7))
    assert same_bits(store.get(key), make_block(7)) and not list(linkable.rglob("*.tmp"))


def test_shared_folders_and_tmpfile_false_keep_temporary_names(linkable: Path) -> None:
    assert not open_store(linkable / "shared", shared=True).publishes_unnamed
    plain = open_store(linkable / "plain", tmpfile=False)
    assert not plain.publishes_unnamed
    plain.put(make_key(1), make_block(1))
    assert same_bits(plain.get(make_key(1)), make_block(1))


def test_probe_falls_back_when_no_linking_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pyfileio, "_link_empty_path", refuse)
    monkeypatch.setattr(pyfileio.os, "link", refuse)
    store = open_store(tmp_path)
    store.put(make_key(2), make_block(2))
    assert not store.publishes_unnamed and same_bits(store.get(make_key(2)), make_block(2))
    assert [p.name for p in tmp_path.rglob(".tmpfile-probe*")] == []
