"""Faults in the disk tier become misses or typed errors: corruption, full disks, I/O errors."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig, KVLayout
from kvtier.errors import TierFullError, TierIOError
from kvtier.tiers.disk import DiskStore
from tests.tiers.disk_support import (
    LAYOUT,
    make_block,
    make_key,
    object_files,
    open_fds,
    open_store,
    same_bits,
    tiny_tmpfs,
    tmpfs_mount,
    tmpfs_unmount,
)

__all__ = ["tiny_tmpfs"]  # the fixture is used by name below


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 20, 100, -1, -500])
def test_corrupt_object_is_a_miss_counted_and_removed(tmp_path: Path, offset: int) -> None:
    store = open_store(tmp_path)
    store.put(make_key(1), make_block(1))
    path = object_files(tmp_path)[0]
    flip_byte(path, offset)
    assert store.get(make_key(1)) is None
    assert store.stats.corrupt == 1 and store.stats.misses == 1
    assert not path.exists() and not store.contains(make_key(1).block_hash)


def test_corrupt_object_in_shared_folder_is_quarantined(tmp_path: Path) -> None:
    store = open_store(tmp_path, shared=True)
    store.put(make_key(1), make_block(1))
    path = object_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    out = torch.full(make_block(1).shape, 7.0, dtype=torch.float16)
    assert store.get(make_key(1), out=out) is None and store.stats.corrupt == 1
    assert not path.exists() and len(list((tmp_path / "quarantine").iterdir())) == 1


@pytest.mark.parametrize("content", [b"", b"hello", b"KVTIERB\x00" + bytes(300)])
def test_foreign_file_under_an_object_name_is_never_served(tmp_path: Path, content: bytes) -> None:
    key = make_key(5)
    digest = key.block_hash.hex()
    folder = tmp_path / digest[:2]
    folder.mkdir(parents=True)
    (folder / f"{digest}.kvb").write_bytes(content)
    store = open_store(tmp_path)  # warm restart indexes it by name; the read verifies it
    assert store.contains(key.block_hash)
    assert store.get(key) is None and store.stats.corrupt == 1


def test_object_of_another_namespace_is_a_miss(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put(make_key(1), make_block(1))
    other_tenant = make_key(1)._replace(namespace=make_key(1, namespace=b"\x01" * 32).namespace)
    assert store.get(other_tenant) is None and store.stats.corrupt == 1


def test_injected_write_eio_raises_tier_io_error_and_leaves_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path, native_io=False)  # NOTE: the fault is injected into the Python twin
    store.put(make_key(0), make_block(0))

    def failing_writev(fd: int, buffers: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("kvtier.tiers.disk.pyfileio.os.writev", failing_writev)
    with pytest.raises(TierIOError, match=r"EIO.*not stored.*check the device"):
        store.put(make_key(1), make_block(1))
    monkeypatch.undo()
    assert store.stats.io_errors == 1 and not store.contains(make_key(1).block_hash)
    assert not list(tmp_path.rglob("*.tmp")) and len(object_files(tmp_path)) == 1
    assert store.used_bytes == object_files(tmp_path)[0].stat().st_size
    assert same_bits(store.get(make_key(0)), make_block(0))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("options", [{}, {"tmpfile": False}, {"shared": True}])
def test_puts_good_and_failed_leave_no_descriptor_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, bool]) -> None:
    store = open_store(tmp_path, native_io=False, **options)  # the compiled routine: test_disk_native.py
    before = open_fds()
    for i in range(4):
        store.put(make_key(i), make_block(i))
    assert open_fds() == before

    def failing_writev(fd: int, buffers: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("kvtier.tiers.disk.pyfileio.os.writev", failing_writev)
    for i in range(4, 8):
        with pytest.raises(TierIOError):
            store.put(make_key(i), make_block(i))
    monkeypatch.undo()
    assert open_fds() == before
    assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in range(4))


def test_injected_read_eio_is_a_miss_that_keeps_the_object(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path, native_io=False)  # NOTE: the fault is injected into the Python twin
    store.put(make_key(0), make_block(0))

    def failing_readv(fd: int, buffers: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("kvtier.tiers.disk.pyfileio.os.readv", failing_readv)
    assert store.get(make_key(0)) is None and store.stats.io_errors == 1
    monkeypatch.undo()
    assert same_bits(store.get(make_key(0)), make_block(0))


def test_full_filesystem_raises_tier_io_error_enospc(tiny_tmpfs: Path) -> None:
    # 272 inodes: after the fan-out folders, objects run out of inodes long before the byte budget.
    store = open_store(tiny_tmpfs, num_blocks=1000)
    stored = []
    with pytest.raises(TierIOError, match=r"ENOSPC.*free space on the filesystem"):
        for i in range(32):
            store.put(make_key(i), make_block(i))
            stored.append(i)
    assert 10 <= len(stored) < 16 and store.stats.io_errors == 1
    assert not [p for p in tiny_tmpfs.rglob("*") if p.name.endswith(".tmp")]
    assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in stored)


def test_free_space_floor_evicts_before_the_filesystem_fills(tmp_path: Path) -> None:
    mount_point = tmp_path / "small"
    tmpfs_mount(mount_point, "size=2m")
    try:
        layout = KVLayout(num_layers=4, num_kv_heads=4, head_dim=128, block_size=16, dtype=torch.float16)
        config = DiskTierConfig(path=str(mount_point), capacity_bytes=1 << 30,
                                min_free_bytes=256 * 1024, fsync=False)
        store = DiskStore(layout, config)  # blocks of 256 KiB; the budget alone would never evict
        for i in range(20):
            key = make_key(i)._replace(token_ids=tuple(range(16)))
            store.put(key, make_block(i, layout))
            st = os.statvfs(mount_point)
            assert st.f_bavail * st.f_frsize >= config.min_free_bytes
        assert store.stats.evictions > 0 and store.stats.io_errors == 0
        last = make_key(19)._replace(token_ids=tuple(range(16)))
        assert same_bits(store.get(last), make_block(19, layout))
        for key_hash in [make_key(i).block_hash for i in range(20)]:
            if store.contains(key_hash):
                store.pin(key_hash)
        with pytest.raises(TierFullError, match="bytes free on the filesystem"):
            store.put(make_key(99)._replace(token_ids=tuple(range(16))), make_block(99, layout))
    finally:
        tmpfs_unmount(mount_point)


def test_store_opens_where_the_fan_out_does_not_fit_and_makes_folders_on_use(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mount_point = tmp_path / "few-inodes"
    tmpfs_mount(mount_point, "size=2m,nr_inodes=40")  # the root and 39 more: not 256 folders
    try:
        store = open_store(mount_point)
        assert "could not create the fan-out folders" in caplog.text
        made = sorted(p.name for p in mount_point.iterdir())
        key = next(make_key(i) for i in range(1000) if store.path_of(make_key(i).block_hash).split("/")[-2] not in made)
        # NOTE: a key whose folder was not made: the put makes it; the block comes back whole.
        for name in made[-3:]:
            os.rmdir(mount_point / name)  # room for the folder and the object
        store.put(key, make_block(1))
        assert same_bits(store.get(key), make_block(1))
    finally:
        tmpfs_unmount(mount_point)


def _rename_good_copy_over(path: Path, key: object, block: torch.Tensor) -> None:
    """What another host's writer does: a whole object under a temporary name, renamed into place."""
    from kvtier.tiers.format import encode_block

    temp = path.with_name(path.name + ".other-host.tmp")
    temp.write_bytes(b"".join(bytes(p) for p in encode_block(key, block, LAYOUT)))  # type: ignore[arg-type]
    os.rename(temp, path)


@pytest.mark.parametrize("shared", [True, False])
def test_good_copy_renamed_over_a_damaged_object_after_the_read_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    import kvtier.tiers.disk.store as disk_module

    store = open_store(tmp_path, shared=shared)
    key, block = make_key(1), make_block(1)
    store.put(key, block)
    path = object_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-7])  # damaged
    real_read = disk_module.read_block

    def read_then_race(*args: object, **kwargs: object) -> object:
        try:
            return real_read(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            _rename_good_copy_over(path, key, block)  # lands between the read and the discard

    monkeypatch.setattr(disk_module, "read_block", read_then_race)
    assert store.get(key) is None and store.stats.corrupt == 1  # what was read was damaged
    monkeypatch.setattr(disk_module, "read_block", real_read)
    assert path.exists() and list(tmp_path.glob("quarantine/*")) == []
    fresh = open_store(tmp_path, shared=shared)  # the good copy is what the folder holds now
    assert same_bits(fresh.get(key), block)


def test_repair_keeps_a_good_copy_renamed_over_a_damaged_object(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kvtier.tiers.disk import fsck

    store = open_store(tmp_path, shared=True)
    key, block = make_key(2), make_block(2)
    store.put(key, block)
    path = object_files(tmp_path)[0]
    path.write_bytes(b"garbage")
    real_check = fsck.check_object

    def check_then_race(*args: object) -> object:
        damage = real_check(*args)  # type: ignore[arg-type]
        _rename_good_copy_over(path, key, block)
        return damage

    monkeypatch.setattr(fsck, "check_object", check_then_race)
    report = fsck.verify_folder(str(tmp_path), repair=True)
    assert report["corrupt"] == 1
    monkeypatch.setattr(fsck, "check_object", real_check)
    assert fsck.verify_folder(str(tmp_path))["ok"] == 1
    assert list((tmp_path / "quarantine").iterdir()) == []
