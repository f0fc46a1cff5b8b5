"""The compiled write routine (kvtier.tiers._fileio) against its Python twins: same files, same
cleanup on real failures, and a writer killed mid-write leaves nothing damaged."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvtier.config import DiskTierConfig
from kvtier.errors import TierIOError
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk_native import native_built
from kvtier.tiers.disk_tmpfile import find_linker
from tests.tiers.disk_support import (
    BIG_LAYOUT,
    big_key,
    files_open_under,
    make_block,
    make_key,
    object_files,
    open_fds,
    open_store,
    same_bits,
    writer_until_killed,
)

needs_native = pytest.mark.skipif(not native_built(), reason="kvtier.tiers._fileio is not built")


def _has_c_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.mark.skipif(not _has_c_compiler(), reason="no C compiler: the routine is optional there")
def test_routine_is_built_where_a_c_compiler_is() -> None:
    # NOTE: setup.py marks the extension optional, so a broken build would otherwise pass unseen.
    assert native_built(), "kvtier.tiers._fileio did not build; run `pip install -e .` and read its log"


@needs_native
@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "temp_name"])
def test_compiled_and_python_routines_write_the_same_files(tmp_path: Path, tmpfile: bool) -> None:
    stores = {native: open_store(tmp_path / str(native), tmpfile=tmpfile, native_io=native) for native in (True, False)}
    for store in stores.values():
        for i in range(6):
            store.put(make_key(i), make_block(i))
    compiled, python = (object_files(tmp_path / str(native)) for native in (True, False))
    assert len(compiled) == 6 and [p.name for p in compiled] == [p.name for p in python]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(compiled, python))
    assert not list(tmp_path.rglob("*.tmp"))
    again = open_store(tmp_path / "True")
    assert all(same_bits(again.get(make_key(i)), make_block(i)) for i in range(6))


@needs_native
def test_parts_are_written_in_order_whatever_their_number_and_sizes(tmp_path: Path) -> None:
    from kvtier.tiers import _fileio

    parts = [bytes([i % 251]) * (i % 7) for i in range(3000)]  # more than IOV_MAX, empty ones among them
    parts += [memoryview(bytearray(b"tail")), bytearray(300_000)]
    _fileio.write_renamed(str(tmp_path / "a.tmp"), str(tmp_path / "a"), parts, True)
    assert (tmp_path / "a").read_bytes() == b"".join(bytes(p) for p in parts)
    _fileio.write_renamed(str(tmp_path / "empty.tmp"), str(tmp_path / "empty"), [], False)
    assert (tmp_path / "empty").read_bytes() == b""
    expected = {"a", "empty"}
    if find_linker(str(tmp_path)) is not None:
        _fileio.publish_unnamed(str(tmp_path / "b"), parts, False, False)
        assert (tmp_path / "b").read_bytes() == (tmp_path / "a").read_bytes()
        expected.add("b")
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporaries left


@needs_native
def test_bad_arguments_raise_typed_errors_and_write_nothing(tmp_path: Path) -> None:
    from kvtier.tiers import _fileio

    strided = memoryview(bytearray(16))[::2]
    with pytest.raises(BufferError):
        _fileio.write_renamed(str(tmp_path / "t.tmp"), str(tmp_path / "t"), [b"ok", strided], False)
    with pytest.raises(TypeError):
        _fileio.write_renamed(str(tmp_path / "t.tmp"), str(tmp_path / "t"), [b"ok", 3], False)
    with pytest.raises(TypeError, match="sequence of bytes-like"):
        _fileio.write_renamed(str(tmp_path / "t.tmp"), str(tmp_path / "t"), 7, False)
    with pytest.raises(ValueError, match="inside a folder"):
        _fileio.publish_unnamed("no-folder", [b"x"], False, False)
    assert list(tmp_path.iterdir()) == []


@needs_native
def test_read_into_fills_parts_to_the_wanted_length_and_names_the_inode(tmp_path: Path) -> None:
    from kvtier.tiers import _fileio

    path = tmp_path / "obj"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    head, body, probe = bytearray(100), bytearray(10140), bytearray(1)
    before = open_fds()
    got, inode = _fileio.read_into(str(path), [memoryview(head), memoryview(body), memoryview(probe)], 10240)
    assert (got, inode) == (10240, path.stat().st_ino) and bytes(head + body) == path.read_bytes()
    path.write_bytes(path.read_bytes() + b"!")  # one byte longer: the probe catches it
    assert _fileio.read_into(str(path), [memoryview(head), memoryview(body), memoryview(probe)], 10240)[0] == 10241
    path.write_bytes(b"short")
    assert _fileio.read_into(str(path), [memoryview(head), memoryview(body)], 10240)[0] == 5
    with pytest.raises(FileNotFoundError):
        _fileio.read_into(str(tmp_path / "absent"), [memoryview(head)], 100)
    with pytest.raises(BufferError):
        _fileio.read_into(str(path), [b"read-only bytes"], 5)
    assert open_fds() == before


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["compiled", "python"])
def test_damaged_object_is_a_miss_removed_and_written_again_whole(tmp_path: Path, native: bool) -> None:
    store = open_store(tmp_path, native_io=native)
    store.put(make_key(0), make_block(0))
    path = object_files(tmp_path)[0]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(blob)
    assert store.get(make_key(0)) is None and store.stats.corrupt == 1 and not path.exists()
    store.put(make_key(0), make_block(0))  # and written again, it reads whole
    assert same_bits(store.get(make_key(0)), make_block(0))


@needs_native
def test_publish_onto_an_existing_name_raises_file_exists_and_keeps_it(tmp_path: Path) -> None:
    from kvtier.tiers import _fileio

    if find_linker(str(tmp_path)) is None:
        pytest.skip("O_TMPFILE inodes cannot be linked here")
    (tmp_path / "x").write_bytes(b"first")
    before = open_fds()
    with pytest.raises(FileExistsError):
        _fileio.publish_unnamed(str(tmp_path / "x"), [b"second"], False, False)
    assert (tmp_path / "x").read_bytes() == b"first" and open_fds() == before


@needs_native
@pytest.mark.parametrize("options", [{}, {"tmpfile": False}, {"shared": True}])
def test_failed_compiled_put_leaves_no_file_and_no_descriptor(tmp_path: Path, options: dict[str, bool]) -> None:
    store = open_store(tmp_path, **options)
    key = make_key(3)
    os.makedirs(os.path.join(store.path_of(key.block_hash), "in-the-way"))  # a real EISDIR/EEXIST, no injection
    before = open_fds()
    for _ in range(3):
        with pytest.raises(TierIOError, match="not stored"):
            store.put(key, make_block(3))
    assert open_fds() == before and store.stats.io_errors == 3 and store.used_bytes == 0
    assert not list(tmp_path.rglob("*.tmp")) and [p for p in object_files(tmp_path) if p.is_file()] == []
    store.put(make_key(4), make_block(4))
    assert same_bits(store.get(make_key(4)), make_block(4))


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """RLIMIT_FSIZE for this process: a write past `nbytes` fails with EFBIG part way (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["compiled", "python"])
@pytest.mark.parametrize("options", [{}, {"tmpfile": False}, {"shared": True}])
def test_write_failing_part_way_leaves_nothing(tmp_path: Path, native: bool, options: dict[str, bool]) -> None:
    store = open_store(tmp_path, native_io=native, **options)
    store.put(make_key(0), make_block(0))
    size = object_files(tmp_path)[0].stat().st_size
    before = open_fds()
    with file_size_limit(size // 2), pytest.raises(TierIOError, match=r"EFBIG.*not stored"):
        store.put(make_key(1), make_block(1))  # a real short write, then EFBIG: no injection
    assert open_fds() == before and store.stats.io_errors == 1 and store.used_bytes == size
    assert not list(tmp_path.rglob("*.tmp")) and len(object_files(tmp_path)) == 1
    store.put(make_key(1), make_block(1))
    assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in range(2))


@needs_native
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="watches the writer through /proc")
@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "temp_name"])
def test_compiled_writer_killed_mid_write_leaves_no_damaged_object(tmp_path: Path, tmpfile: bool) -> None:
    root = str(tmp_path)
    child = multiprocessing.get_context("spawn").Process(target=writer_until_killed, args=(root, tmpfile))
    child.start()
    assert child.pid is not None
    try:
        deadline = time.monotonic() + 120
        # NOTE: kill while the writer holds an object's file open: the write is between its open
        # and its close, which is where a torn object could be left.
        while len(object_files(tmp_path)) < 2 or not files_open_under(child.pid, root):
            assert time.monotonic() < deadline and child.is_alive(), "the writer never got going"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    store = DiskStore(BIG_LAYOUT, DiskTierConfig(path=root, capacity_bytes=1 << 40))
    written = store.num_blocks
    assert written >= 2 and not list(tmp_path.rglob("*.tmp"))
    for i in range(written + 1):  # every finished block whole, the one in flight absent or whole
        got = store.get(big_key(i))
        assert got is None if i == written else same_bits(got, make_block(i, BIG_LAYOUT))
    assert store.stats.corrupt == 0



def test_without_the_routine_a_store_logs_once_and_writes_with_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kvtier.tiers import disk_native

    monkeypatch.setattr(disk_native, "_fileio", None)
    disk_native._log_not_built.cache_clear()
    with caplog.at_level(logging.INFO, logger="kvtier.tiers.disk_native"):
        stores = [open_store(tmp_path / name, **options) for name, options in
                  [("local", {}), ("plain", {"tmpfile": False}), ("shared", {"shared": True})]]
    assert caplog.text.count("is not built") == 1
    for store in stores:
        store.put(make_key(5), make_block(5))
        assert same_bits(store.get(make_key(5)), make_block(5))
    disk_native._log_not_built.cache_clear()
