"""The disk tier's O_DIRECT mode (DiskTierConfig.direct_io): the compiled and Python routines move
the same bytes with O_DIRECT whatever the buffers' alignment and lengths, a store in that mode keeps
nothing in the page cache, reads objects of either header kind, catches damage as the buffered mode
does, and falls back to buffered I/O on a filesystem that refuses O_DIRECT."""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
from pathlib import Path

import pytest
import torch
import xxhash

from kvtier.bench.page_cache import drop_cached
from kvtier.config import DiskTierConfig
from kvtier.tiers.aligned import PAGE_BYTES, page_aligned_empty
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk.direct import probe_direct
from kvtier.tiers.disk.fileio import FileIO
from kvtier.tiers.format import decode_header, header_bytes_for, num_segments
from kvtier.tiers.format.codecs import tensor_bytes
from kvtier.tiers.format.header import PAGE_ALIGN
from tests.tiers.disk_support import (
    BIG_LAYOUT,
    TWINS,
    big_key,
    make_block,
    make_key,
    needs_native,
    object_files,
    open_store,
    same_bits,
    tmpfs_mount,
    tmpfs_unmount,
)


@pytest.fixture
def direct_root_fd(root_fd: int, tmp_path: Path) -> int:
    """root_fd, on a filesystem that takes O_DIRECT."""
    if not probe_direct(root_fd, 0o600, "f"):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    return root_fd


def resident_pages(path: Path) -> int:
    """Pages of `path` in the page cache: mincore(2) over a map of the whole file (mapping faults nothing in)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start
    return sum(v & 1 for v in vec)


def unaligned(nbytes: int) -> memoryview:
    """Writable bytes whose memory starts 64 bytes past a page (torch's own alignment, never a page's)."""
    raw = page_aligned_empty((nbytes + PAGE_BYTES,), torch.uint8)
    return tensor_bytes(raw[64:64 + nbytes])


def aligned(nbytes: int) -> memoryview:
    return tensor_bytes(page_aligned_empty((nbytes,), torch.uint8))


def filled(view: memoryview, seed: int) -> memoryview:
    view[:] = (bytes(range(seed % 251, 256)) * (view.nbytes // 200 + 2))[:view.nbytes]
    return view


# parts of one object: page-aligned and whole pages (moved as they are), unaligned memory (a stand-in
# each), a length that is not whole pages (one stand-in for the object, the file truncated back)
CASES = {
    "aligned": lambda: [aligned(PAGE_ALIGN), aligned(8 * PAGE_ALIGN)],
    "header_unaligned": lambda: [unaligned(PAGE_ALIGN), aligned(4 * PAGE_ALIGN)],
    "both_unaligned": lambda: [unaligned(2 * PAGE_ALIGN), unaligned(3 * PAGE_ALIGN)],
    "odd_length": lambda: [unaligned(1088), aligned(PAGE_ALIGN), unaligned(512)],
    "tiny": lambda: [unaligned(100)],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "temp_name"])
def test_direct_writes_and_reads_move_exactly_the_parts(io: FileIO, direct_root_fd: int, tmp_path: Path, case: str,
                                                       tmpfile: bool) -> None:
    parts = [filled(p, i * 7 + 1) for i, p in enumerate(CASES[case]())]
    content = b"".join(bytes(p) for p in parts)
    if tmpfile:
        io.publish_unnamed(direct_root_fd, "f", "obj", parts, True, True, 0o600, True)
    else:
        io.write_renamed(direct_root_fd, "f", "obj.tmp", "obj", parts, True, 0o600, True)
    path = tmp_path / "f" / "obj"
    assert path.read_bytes() == content  # exactly: no padding left when the length is not whole pages
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not list(tmp_path.glob("f/*.tmp"))
    drop_cached([str(path)])
    targets = [filled(p, 3) for p in CASES[case]()]  # the same shapes and alignments as the write's
    assert io.read_into(direct_root_fd, "f", "obj", targets, len(content), True)[:2] == (len(content), len(content))
    assert b"".join(bytes(t) for t in targets) == content
    checksum_from = targets[0].nbytes
    ((got, size, _), checksum), = io.read_many_into(direct_root_fd, [("f", "obj", targets, len(content), checksum_from)], True)
    assert (got, size, checksum) == (len(content), len(content), xxhash.xxh3_64_intdigest(content[checksum_from:]))
    assert resident_pages(path) == 0


def test_a_direct_read_of_another_size_reads_nothing_and_a_fifo_is_no_regular_file(io: FileIO, direct_root_fd: int,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "f" / "short").write_bytes(b"x" * 5000)
    target = aligned(2 * PAGE_ALIGN)
    assert io.read_into(direct_root_fd, "f", "short", [target], 2 * PAGE_ALIGN, True)[:2] == (0, 5000)
    os.mkfifo(tmp_path / "f" / "fifo")
    (tmp_path / "f" / "folder").mkdir()
    for name in ("fifo", "folder"):  # O_DIRECT refuses both (EINVAL): opened again without it, never read
        assert io.read_into(direct_root_fd, "f", name, [target], 2 * PAGE_ALIGN, True)[:2] == (0, None)
    with pytest.raises(FileNotFoundError):
        io.read_into(direct_root_fd, "f", "absent", [target], 2 * PAGE_ALIGN, True)


@needs_native
def test_the_compiled_and_python_direct_routines_write_the_same_files(tmp_path: Path) -> None:
    for native in (True, False):
        store = open_store(tmp_path / str(native), direct_io=True, native_io=native)
        if not store.direct:
            pytest.skip(f"{tmp_path} refuses O_DIRECT")
        for i in range(5):
            store.put(make_key(i), make_block(i))
    compiled, python = (object_files(tmp_path / str(native)) for native in (True, False))
    assert len(compiled) == 5 and [a.read_bytes() for a in compiled] == [b.read_bytes() for b in python]


@pytest.mark.parametrize("native", TWINS)
def test_a_direct_store_round_trips_page_aligned_objects_and_caches_nothing(tmp_path: Path, native: bool) -> None:
    store = open_store(tmp_path / "tier", 100, direct_io=True, native_io=native)
    if not store.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    # [num_layers, 2, num_kv_heads, block_size, head_dim] of 4 MiB, in page-aligned host slots
    slots = page_aligned_empty((4, *BIG_LAYOUT.block_shape), BIG_LAYOUT.dtype)
    big_store = DiskStore(BIG_LAYOUT, DiskTierConfig(path=str(tmp_path / "big4"), capacity_bytes=1 << 26,
                                                     direct_io=True, native_io=native, fsync=False))
    blocks = [torch.randn(BIG_LAYOUT.block_shape).to(BIG_LAYOUT.dtype) for _ in range(4)]
    for i, block in enumerate(blocks):
        slots[i].copy_(block)
        big_store.put(big_key(i), slots[i])
    assert all(resident_pages(path) == 0 for path in object_files(tmp_path / "big4"))
    for path in object_files(tmp_path / "big4"):
        header = decode_header(path.read_bytes())
        assert header.header_len == header_bytes_for(BIG_LAYOUT.block_size, num_segments(BIG_LAYOUT), True) == 3 * PAGE_ALIGN
        assert path.stat().st_size == header.header_len + BIG_LAYOUT.page_size_bytes
        drop_cached([str(path)])
    slots.zero_()
    assert all(big_store.get(big_key(i), slots[i]).data_ptr() == slots[i].data_ptr() for i in range(4))
    assert all(same_bits(slots[i], block) for i, block in enumerate(blocks))
    slots.zero_()
    got = big_store.get_many([big_key(i) for i in range(4)], list(slots))
    assert all(same_bits(g, b) for g, b in zip(got, blocks))
    plan = big_store.plan_reads([big_key(i) for i in range(4)])
    slots.zero_()
    assert plan is not None and big_store.read_planned(plan, slots)
    assert all(same_bits(slots[i], block) for i, block in enumerate(blocks))
    assert all(resident_pages(path) == 0 for path in object_files(tmp_path / "big4"))
    # the tiny layout's objects are not whole pages: one stand-in each, the file truncated back
    for i in range(3):
        store.put(make_key(i), make_block(i))
    assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in range(3))
    store.close()
    big_store.close()


@pytest.mark.parametrize("first_direct", [True, False], ids=["direct_then_buffered", "buffered_then_direct"])
def test_a_store_reopened_in_the_other_mode_serves_the_objects_of_the_first(tmp_path: Path,
                                                                          first_direct: bool) -> None:
    first = open_store(tmp_path, direct_io=first_direct)
    if first_direct and not first.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    for i in range(6):
        first.put(make_key(i), make_block(i))
    first.close()
    second = open_store(tmp_path, direct_io=not first_direct)
    assert second.num_blocks == 6
    assert all(same_bits(second.get(make_key(i)), make_block(i)) for i in range(6))
    assert all(same_bits(b, make_block(i)) for i, b in enumerate(second.get_many([make_key(i) for i in range(6)])))
    second.put(make_key(6), make_block(6))
    kinds = {decode_header(p.read_bytes()).header_len == PAGE_ALIGN for p in object_files(tmp_path)}
    assert kinds == {True, False}  # both kinds of header live in the folder
    assert second.stats.corrupt == 0 and second.stats.misses == 0


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "grow"])
def test_a_direct_store_catches_damage(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path, direct_io=True)
    if not store.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    store.put(make_key(1), make_block(1))
    path = Path(store.path_of(make_key(1).block_hash))
    data = bytearray(path.read_bytes())
    if damage == "flip_payload":
        data[-3] ^= 0x10
    elif damage == "flip_header":
        data[200] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    else:
        data += b"\0" * PAGE_ALIGN
    path.write_bytes(bytes(data))
    assert store.get(make_key(1)) is None
    assert store.stats.corrupt == 1 and not path.exists()  # quarantined or removed, never served
    store.put(make_key(1), make_block(1))
    assert same_bits(store.get(make_key(1)), make_block(1))


def test_a_folder_that_refuses_o_direct_gets_buffered_io(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mount_point = tmp_path / "ramfs"
    tmpfs_mount(mount_point, "size=4m", fs_type="ramfs")  # NOTE: ramfs has no O_DIRECT (EINVAL at open)
    try:
        with caplog.at_level("WARNING"):
            store = open_store(mount_point / "tier", direct_io=True)
        assert not store.direct and "refuses O_DIRECT" in caplog.text
        for i in range(4):
            store.put(make_key(i), make_block(i))
        assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in range(4))
        assert all(decode_header(p.read_bytes()).header_len < PAGE_ALIGN for p in object_files(mount_point / "tier"))
        assert not list((mount_point / "tier").rglob(".direct-probe*"))
        store.close()
    finally:
        tmpfs_unmount(mount_point)
