"""The compiled file I/O (kvtier.tiers.disk._fileio) against its Python twin (pyfileio): the same
calls give the same files and results, the same cleanup on real failures, and a writer killed
mid-write leaves nothing damaged."""
from __future__ import annotations

import contextlib
import errno
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
import xxhash

from kvtier.config import DiskTierConfig
from kvtier.errors import TierIOError
from kvtier.tiers.disk import DiskStore, pyfileio
from kvtier.tiers.disk.fileio import FileIO, native_built
from kvtier.tiers.disk.tmpfile import probe_linking
from tests.tiers.disk_support import (
    BIG_LAYOUT,
    big_key,
    files_open_under,
    make_block,
    make_key,
    needs_native,
    object_files,
    open_fds,
    open_store,
    same_bits,
    writer_until_killed,
)


def _has_c_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.mark.skipif(not _has_c_compiler(), reason="no C compiler: the routine is optional there")
def test_routine_is_built_where_a_c_compiler_is() -> None:
    # NOTE: setup.py marks the extension optional, so a broken build would otherwise pass unseen.
    assert native_built(), "kvtier.tiers.disk._fileio did not build; run `pip install -e .` and read its log"


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


def test_parts_are_written_in_order_whatever_their_number_and_sizes(io: FileIO, tmp_path: Path, root_fd: int) -> None:
    parts = [bytes([i % 251]) * (i % 7) for i in range(3000)]  # more than IOV_MAX, empty ones among them
    parts += [memoryview(bytearray(b"tail")), bytearray(300_000)]
    io.write_renamed(root_fd, "f", "a.tmp", "a", parts, True, 0o600)
    assert (tmp_path / "f" / "a").read_bytes() == b"".join(bytes(p) for p in parts)
    io.write_renamed(root_fd, "f", "empty.tmp", "empty", [], False, 0o640)
    assert (tmp_path / "f" / "empty").read_bytes() == b""
    assert (tmp_path / "f" / "empty").stat().st_mode & 0o777 == 0o640 & ~_umask()
    expected = {"a", "empty"}
    via_proc = probe_linking(root_fd, 0o600, "f")
    if via_proc is not None:
        io.publish_unnamed(root_fd, "f", "b", parts, False, via_proc, 0o600)
        assert (tmp_path / "f" / "b").read_bytes() == (tmp_path / "f" / "a").read_bytes()
        expected.add("b")
    assert {p.name for p in (tmp_path / "f").iterdir()} == expected  # no temporaries left


def _umask() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))


@needs_native
def test_bad_arguments_raise_typed_errors_and_write_nothing(tmp_path: Path, root_fd: int) -> None:
    from kvtier.tiers.disk import _fileio

    strided = memoryview(bytearray(16))[::2]
    with pytest.raises(BufferError):
        _fileio.write_renamed(root_fd, "f", "t.tmp", "t", [b"ok", strided], False, 0o600)
    with pytest.raises(TypeError):
        _fileio.write_renamed(root_fd, "f", "t.tmp", "t", [b"ok", 3], False, 0o600)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of bytes-like"):
        _fileio.write_renamed(root_fd, "f", "t.tmp", "t", 7, False, 0o600)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        _fileio.read_into(root_fd, "f", "t", [b"read-only bytes"], 5)  # type: ignore[list-item]
    assert list((tmp_path / "f").iterdir()) == []


def test_read_into_reads_only_a_regular_file_of_the_wanted_size(io: FileIO, tmp_path: Path, root_fd: int) -> None:
    path = tmp_path / "f" / "obj"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    head, body = bytearray(100), bytearray(10140)
    parts = [memoryview(head), memoryview(body)]
    before = open_fds()
    assert io.read_into(root_fd, "f", "obj", parts, 10240) == (10240, 10240, path.stat().st_ino)
    assert bytes(head + body) == path.read_bytes()
    path.write_bytes(path.read_bytes() + b"!")  # one byte longer: nothing is read, the size says why
    assert io.read_into(root_fd, "f", "obj", parts, 10240)[:2] == (0, 10241)
    os.mkfifo(tmp_path / "f" / "fifo")  # never blocks, never read
    assert io.read_into(root_fd, "f", "fifo", parts, 10240)[:2] == (0, None)
    (tmp_path / "f" / "link").symlink_to(path)
    with pytest.raises(OSError) as followed:
        io.read_into(root_fd, "f", "link", parts, 10241)
    assert followed.value.errno == errno.ELOOP
    (tmp_path / "g").symlink_to(tmp_path / "f")  # a linked fan-out folder is never entered
    with pytest.raises(NotADirectoryError):
        io.read_into(root_fd, "g", "obj", parts, 10241)
    with pytest.raises(FileNotFoundError):
        io.read_into(root_fd, "f", "absent", parts, 100)
    assert open_fds() == before


def test_read_many_into_is_read_into_of_each_request_with_its_payload_checksum(io: FileIO, tmp_path: Path,
                                                                               root_fd: int) -> None:
    path = tmp_path / "f" / "obj"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    os.mkfifo(tmp_path / "f" / "fifo")
    (tmp_path / "f" / "link").symlink_to(path)
    views = [[memoryview(bytearray(100)), memoryview(bytearray(10140))] for _ in range(6)]
    before = open_fds()
    results = io.read_many_into(root_fd, [("f", "obj", views[0], 10240, 100), ("f", "absent", views[1], 10240, 100),
                                          ("f", "obj", views[2], 10241, 100), ("f", "fifo", views[3], 10240, 100),
                                          ("f", "link", views[4], 10240, 100), ("g", "obj", views[5], 10240, 100)])
    assert open_fds() == before
    ino = path.stat().st_ino
    assert results[0] == ((10240, 10240, ino), xxhash.xxh3_64_intdigest(path.read_bytes()[100:]))
    assert bytes(views[0][0]) + bytes(views[0][1]) == path.read_bytes()
    assert isinstance(results[1], FileNotFoundError) and results[1].filename == "absent"
    assert results[2] == ((0, 10240, ino), None)  # another size: nothing read, no checksum
    assert results[3][0][:2] == (0, None) and results[3][1] is None  # type: ignore[index]  # not a regular file
    assert isinstance(results[4], OSError) and results[4].errno == errno.ELOOP
    assert isinstance(results[5], FileNotFoundError) and results[5].filename == "g"  # no such fan-out folder
    assert io.read_many_into(root_fd, []) == []
    with pytest.raises(TypeError):
        io.read_many_into(root_fd, [("f", "obj", views[0], 10240)])  # type: ignore[list-item]


def _known_object(path: Path) -> tuple[bytes, int]:
    """A 10240-byte file of a 128-byte "header" (payload checksum at 16, own checksum last) and its known checksum."""
    payload = bytes(range(256)) * 39 + bytes(range(128))
    header = bytearray(b"H" * 120 + bytes(8))
    header[16:24] = xxhash.xxh3_64_intdigest(payload).to_bytes(8, "little")
    header[40:44] = b"KEYS"
    known = xxhash.xxh3_64_intdigest(bytes(header[:-8]))
    header[-8:] = known.to_bytes(8, "little")
    path.write_bytes(bytes(header) + payload)
    return path.read_bytes(), known


def test_read_many_known_vouches_only_for_the_known_header_its_pieces_and_payload(io: FileIO, tmp_path: Path,
                                                                                root_fd: int) -> None:
    blob, known = _known_object(tmp_path / "f" / "obj")
    flipped = bytearray(blob)
    flipped[5000] ^= 1
    (tmp_path / "f" / "flipped").write_bytes(flipped)
    os.mkfifo(tmp_path / "f" / "fifo")
    (tmp_path / "f" / "link").symlink_to(tmp_path / "f" / "obj")
    ino = (tmp_path / "f" / "obj").stat().st_ino
    pieces = ((40, b"KEYS"), (0, b"HH"))
    cases = [("obj", known, 16, pieces, True), ("obj", known ^ 1, 16, pieces, False),
             ("obj", known, 24, pieces, False), ("obj", known, 16, ((40, b"KEYZ"),), False),
             ("obj", known, 16, ((126, b"KEYS"),), False), ("obj", known, 16, ((-1, b"H"),), False),
             ("obj", known, 16, ((128, b""),), True), ("obj", known, 16, (), True), ("flipped", known, 16, pieces, False)]
    views = [(memoryview(bytearray(128)), memoryview(bytearray(10112))) for _ in range(len(cases) + 4)]
    before = open_fds()
    results = io.read_many_known(root_fd, [("f", name, views[i], 10240, k, at, p)
                                           for i, (name, k, at, p, _) in enumerate(cases)]
                                 + [("f", "obj", views[-4], 10241, known, 16, pieces),
                                    ("f", "fifo", views[-3], 10240, known, 16, pieces),
                                    ("f", "link", views[-2], 10240, known, 16, pieces),
                                    ("f", "absent", views[-1], 10240, known, 16, pieces)])
    assert open_fds() == before
    for i, (name, *_, vouched) in enumerate(cases):
        assert results[i] is True if vouched else results[i] == (10240, 10240, ino if name == "obj" else results[i][2])
        assert bytes(views[i][0]) + bytes(views[i][1]) == (blob if name == "obj" else flipped)
    assert results[len(cases)] == (0, 10240, ino)  # another size: nothing read
    assert results[len(cases) + 1][:2] == (0, None)  # type: ignore[index]  # not a regular file
    assert isinstance(results[-2], OSError) and results[-2].errno == errno.ELOOP
    assert isinstance(results[-1], FileNotFoundError)
    assert io.read_many_known(root_fd, []) == []
    for bad in [("f", "obj", views[0], 10240, known, 16), ("f", "obj", views[0], 10240, known, 16, ((1, "s"),)),
                ("f", "obj", views[0], 10240, known, 16, [(1, b"s")])]:
        with pytest.raises(TypeError):
            io.read_many_known(root_fd, [bad])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        io.read_many_known(root_fd, [("f", "obj", views[0], 10240, known, 16, ((0, b"H"),) * 9)])


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


def test_publish_onto_an_existing_name_raises_file_exists_and_keeps_it(io: FileIO, tmp_path: Path,
                                                                       root_fd: int) -> None:
    via_proc = probe_linking(root_fd, 0o600, "f")
    if via_proc is None:
        pytest.skip("O_TMPFILE inodes cannot be linked here")
    (tmp_path / "f" / "x").write_bytes(b"first")
    before = open_fds()
    with pytest.raises(FileExistsError):
        io.publish_unnamed(root_fd, "f", "x", [b"second"], False, via_proc, 0o600)
    assert (tmp_path / "f" / "x").read_bytes() == b"first" and open_fds() == before


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
    from kvtier.tiers.disk import fileio

    monkeypatch.setattr(fileio, "_fileio", None)
    fileio._log_not_built.cache_clear()
    with caplog.at_level(logging.INFO, logger="kvtier.tiers.disk.fileio"):
        stores = [open_store(tmp_path / name, **options) for name, options in
                  [("local", {}), ("plain", {"tmpfile": False}), ("shared", {"shared": True})]]
    assert caplog.text.count("is not built") == 1
    for store in stores:
        store.put(make_key(5), make_block(5))
        assert same_bits(store.get(make_key(5)), make_block(5))
        assert store._io is pyfileio
    fileio._log_not_built.cache_clear()
