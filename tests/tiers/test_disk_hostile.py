"""A hostile file in a tier's folder is an input: a FIFO, a huge sparse file, a crafted name or a
link at an object's name, or a linked fan-out folder becomes a miss, never a hang, a crash, an
eviction of good data or a write outside the root."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.errors import TierIOError
from tests.tiers.disk_support import (
    LAYOUT,
    make_block,
    make_key,
    object_bytes,
    object_files,
    open_store,
    same_bits,
)

TIB = 1 << 40
STORES = [pytest.param(shared, native, id=f"{'shared' if shared else 'local'}-{'c' if native else 'py'}")
          for shared in (False, True) for native in (True, False)]


def _object_path(root: Path, block_hash: bytes) -> Path:
    digest = block_hash.hex()
    return root / digest[:2] / f"{digest}.kvb"


def _finishes(fn: object, fifo: Path, timeout_s: float = 10.0) -> tuple[bool, object]:
    """Run fn() on a thread; if it is still blocked after timeout_s, open the FIFO for writing so
    that it can end, and report that it hung."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(timeout_s)
    hung = thread.is_alive()
    if hung:
        with open(fifo, "wb"):  # unblocks an open(O_RDONLY) waiting for a writer
            pass
        thread.join(timeout_s)
    return not hung, result[0] if result else None


@pytest.mark.parametrize(("shared", "native"), STORES)
def test_fifo_at_an_object_name_is_a_miss_not_a_hang(tmp_path: Path, shared: bool, native: bool) -> None:
    store = open_store(tmp_path / "tier", shared=shared, native_io=native)
    store.put(make_key(1), make_block(1))
    store.put(make_key(2), make_block(2))
    path = _object_path(tmp_path / "tier", make_key(1).block_hash)
    path.unlink()
    os.mkfifo(path)
    finished, got = _finishes(lambda: store.get(make_key(1)), path)
    assert finished, "get blocked on a FIFO at an object's name"
    assert got is None and store.stats.misses == 1
    assert same_bits(store.get(make_key(2)), make_block(2))


def test_fifo_at_an_object_name_does_not_hang_allocate(tmp_path: Path) -> None:
    layout = LAYOUT
    store = open_store(tmp_path / "tier")
    cache = TieredKVCache(layout, 4, [store])
    ns = namespace_digest("m", None)
    tokens = list(range(3 * layout.block_size + 1))  # 3 full blocks and one token
    seq = cache.allocate("a", tokens, ns)
    cache.pool.write_blocks(seq.block_ids[:3], torch.stack([make_block(i) for i in range(3)]))
    cache.mark_computed("a", len(tokens))
    cache.free("a")
    cache.allocate("b", list(range(1000, 1000 + 4 * layout.block_size)), ns)  # evicts a's blocks to disk
    cache.flush()
    cache.free("b")
    first = object_files(tmp_path / "tier")[0]
    first.unlink()
    os.mkfifo(first)
    finished, seq = _finishes(lambda: cache.allocate("c", tokens, ns), first)
    assert finished, "allocate blocked on a FIFO in the disk tier"
    assert seq is not None and seq.num_cached_tokens < len(tokens)  # type: ignore[attr-defined]
    cache.close()


@pytest.mark.parametrize(("shared", "native"), STORES)
def test_huge_sparse_file_at_an_object_name_is_a_bounded_miss(tmp_path: Path, shared: bool, native: bool) -> None:
    store = open_store(tmp_path / "tier", shared=shared, native_io=native)
    store.put(make_key(1), make_block(1))
    path = _object_path(tmp_path / "tier", make_key(1).block_hash)
    os.truncate(path, TIB)  # sparse: costs no disk, but a reader that trusts the size would allocate it
    assert store.get(make_key(1)) is None  # not a RuntimeError from the allocator
    assert store.stats.corrupt == 1 and not path.exists()
    store.put(make_key(1), make_block(1))  # and the key can be stored again
    assert same_bits(store.get(make_key(1)), make_block(1))


@pytest.mark.parametrize("shared", [False, True])
def test_restart_never_counts_a_file_larger_than_an_object(tmp_path: Path, shared: bool) -> None:
    root = tmp_path / "tier"
    store = open_store(root, num_blocks=20, shared=shared)
    for i in range(10):
        store.put(make_key(i), make_block(i))
    huge = _object_path(root, make_key(99).block_hash)
    huge.parent.mkdir(exist_ok=True)
    huge.write_bytes(b"x")
    os.truncate(huge, TIB)
    again = open_store(root, num_blocks=20, shared=shared)
    assert again.num_blocks == 10 and again.used_bytes <= again.capacity_bytes
    assert all(same_bits(again.get(make_key(i)), make_block(i)) for i in range(10))
    assert not again.contains(make_key(99).block_hash)


def test_crafted_name_is_ignored_not_indexed(tmp_path: Path) -> None:
    root = tmp_path / "tier"
    store = open_store(root, num_blocks=4)
    for i in range(4):
        store.put(make_key(i), make_block(i))
    digest = make_key(50).block_hash.hex()
    crafted = digest[:2] + " " + digest[2:62] + " "  # 64 characters that bytes.fromhex reads as 31 bytes
    (root / digest[:2] / f"{crafted}.kvb").write_bytes(bytes(object_bytes()))
    again = open_store(root, num_blocks=4)
    assert again.num_blocks == 4 and again.used_bytes == 4 * object_bytes()
    assert all(same_bits(again.get(make_key(i)), make_block(i)) for i in range(4))


def test_linked_fan_out_folder_keeps_writes_and_deletes_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "tier", tmp_path / "outside"
    outside.mkdir()
    store = open_store(root)
    key = make_key(1)
    store.put(key, make_block(1))
    fan_out = _object_path(root, key.block_hash).parent
    for child in fan_out.iterdir():
        (outside / child.name).write_bytes(child.read_bytes())  # a copy outside, same names
        child.unlink()
    fan_out.rmdir()
    fan_out.symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    store.evict(key.block_hash)
    other = next(make_key(i) for i in range(2, 5000)
                 if _object_path(root, make_key(i).block_hash).parent == fan_out)
    with pytest.raises(TierIOError, match="link"):
        store.put(other, make_block(2))
    assert sorted(p.name for p in outside.iterdir()) == before
    fresh = open_store(root)
    assert fresh.get(key) is None and not fresh.contains(key.block_hash)


def test_linked_quarantine_folder_is_not_written_through(tmp_path: Path) -> None:
    root, outside = tmp_path / "tier", tmp_path / "outside"
    outside.mkdir()
    store = open_store(root, shared=True)
    store.put(make_key(1), make_block(1))
    (root / "quarantine").symlink_to(outside)
    path = object_files(root)[0]
    path.write_bytes(path.read_bytes()[:-3])
    assert store.get(make_key(1)) is None and store.stats.corrupt == 1
    assert list(outside.iterdir()) == [] and not path.exists()


@pytest.mark.parametrize("shared", [False, True])
def test_link_at_an_object_name_is_never_followed(tmp_path: Path, shared: bool) -> None:
    elsewhere = open_store(tmp_path / "elsewhere")
    elsewhere.put(make_key(1), make_block(1))
    target = object_files(tmp_path / "elsewhere")[0]
    root = tmp_path / "tier"
    open_store(root, shared=shared)
    link = _object_path(root, make_key(1).block_hash)
    link.symlink_to(target)
    store = open_store(root, shared=shared)
    assert not store.contains(make_key(1).block_hash) and store.get(make_key(1)) is None
    assert target.exists()


def test_files_are_private_by_default_and_modes_are_an_option(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = open_store(tmp_path / "private", shared=True)
        store.put(make_key(1), make_block(1))
        path = object_files(tmp_path / "private")[0]
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
        group = open_store(tmp_path / "group", shared=True, file_mode=0o640, dir_mode=0o750)
        group.put(make_key(1), make_block(1))
        path = object_files(tmp_path / "group")[0]
        assert path.stat().st_mode & 0o777 == 0o640 and path.parent.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


def test_quarantine_is_bounded_and_counted(tmp_path: Path) -> None:
    store = open_store(tmp_path / "tier", num_blocks=200, shared=True)
    for i in range(40):
        store.put(make_key(i), make_block(i))
        path = _object_path(tmp_path / "tier", make_key(i).block_hash)
        path.write_bytes(path.read_bytes()[:-1])
        assert store.get(make_key(i)) is None
    quarantined = list((tmp_path / "tier" / "quarantine").iterdir())
    assert store.stats.corrupt == 40 and 1 <= len(quarantined) <= 16
    assert store.used_bytes == sum(p.stat().st_size for p in quarantined) <= store.capacity_bytes


def test_bad_paths_raise_typed_errors_with_a_remedy(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(TierIOError, match="not a folder"):
        open_store(tmp_path / "a-file")
    with pytest.raises(TierIOError, match="not a folder"):
        open_store(tmp_path / "a-file" / "below")


def test_put_of_a_non_tensor_is_a_type_error(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(TypeError, match="torch.Tensor"):
        store.put(make_key(1), bytes(LAYOUT.page_size_bytes))  # type: ignore[arg-type]


def test_read_only_filesystem_is_refused_with_a_remedy(tmp_path: Path) -> None:
    from tests.tiers.disk_support import tmpfs_mount, tmpfs_unmount

    mount_point = tmp_path / "ro"
    tmpfs_mount(mount_point, "size=1m,ro")
    try:
        with pytest.raises(TierIOError, match="read-only"):
            open_store(mount_point / "tier")
        with pytest.raises(TierIOError, match="read-only"):
            open_store(mount_point)
    finally:
        tmpfs_unmount(mount_point)


def _open_as_nobody(path: str) -> str:
    try:
        open_store(Path(path))
    except TierIOError as exc:
        return str(exc)
    return "opened"


def test_folder_without_permission_is_refused_with_a_remedy() -> None:
    from tests.unprivileged import run_unprivileged, world_traversable_dir

    parent = world_traversable_dir()
    try:
        (parent / "taken").mkdir(mode=0o755)
        for target in (parent / "new", parent / "taken"):
            message, raised, _, _ = run_unprivileged(_open_as_nobody, str(target))
            assert raised is None, raised
            assert "permission" in message and "EACCES" in message, message
    finally:
        import shutil
        shutil.rmtree(parent)


@pytest.mark.parametrize(("shared", "native"), STORES)
def test_a_batch_read_serves_the_good_objects_around_hostile_ones(tmp_path: Path, shared: bool, native: bool) -> None:
    """get_many: a flipped byte, a truncated file, another key's file, a FIFO and a missing object
    in one batch are each a counted miss; every other block of the batch comes back whole."""
    store = open_store(tmp_path / "tier", shared=shared, native_io=native)
    keys = [make_key(i) for i in range(8)]
    for i, key in enumerate(keys):
        store.put(key, make_block(i))
    paths = [_object_path(tmp_path / "tier", key.block_hash) for key in keys]
    flipped = bytearray(paths[1].read_bytes())
    flipped[-100] ^= 0x10
    paths[1].write_bytes(flipped)
    paths[3].write_bytes(paths[3].read_bytes()[:-1])
    paths[4].write_bytes(paths[6].read_bytes())  # block 6's object under block 4's name
    paths[5].unlink()
    os.mkfifo(paths[5])
    paths[7].unlink()
    outs = [torch.full(LAYOUT.block_shape, float("nan"), dtype=LAYOUT.dtype) for _ in keys]
    finished, got = _finishes(lambda: store.get_many(keys, outs), paths[5])
    assert finished, "get_many blocked on a FIFO at an object's name"
    served = [i for i, block in enumerate(got) if block is not None]  # type: ignore[union-attr]
    assert served == [0, 2, 6]
    for i in served:
        assert got[i].data_ptr() == outs[i].data_ptr() and same_bits(outs[i], make_block(i))  # type: ignore[index]
    assert store.stats.corrupt == 4 and store.stats.misses == 5 and store.stats.hits == 3
    assert same_bits(store.get_many([keys[0]])[0], make_block(0))  # and the store still serves
