"""read_block's fast path (a known key, raw codec): every damaged byte or mismatched field is caught."""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import xxhash

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.disk.fileio import FileIO, native_built, routines
from kvtier.tiers.disk.read import ReadRequest, ReadResult, read_block, read_blocks
from kvtier.tiers.format import FIXED_HEADER_BYTES, encode_block, header_bytes_for, num_segments, stored_header_checksum
from kvtier.tiers.format import verify as block_verify
from tests.tiers.disk_support import LAYOUT, make_block, make_key, open_fds, open_store, same_bits

KEY = make_key(3)
HEADER_LEN = header_bytes_for(LAYOUT.block_size, num_segments(LAYOUT))


def raw_object(key: object = KEY, seed: int = 3) -> bytearray:
    return bytearray(b"".join(bytes(p) for p in encode_block(KEY if key is None else key, make_block(seed),  # type: ignore[arg-type]
                                                           LAYOUT)))


def write(tmp_path: Path, blob: bytes) -> str:
    path = tmp_path / "object.kvb"
    path.write_bytes(blob)
    return str(path)


def reseal_header(blob: bytearray) -> bytearray:
    """Recompute the header checksum, as a buggy writer would, so the field comparison is what must catch it."""
    struct.pack_into("<Q", blob, HEADER_LEN - 8, xxhash.xxh3_64_intdigest(bytes(blob[:HEADER_LEN - 8])))
    return blob


ReadFn = Callable[..., ReadResult]


def _read_at_path(io: FileIO, batch: bool = False) -> ReadFn:
    """read_block of the file at `path`, whose folder is taken as the fan-out folder of its parent
    (`batch`: the same object read as a batch of one by read_blocks, which raises what it returns)."""
    def read(path: str, key: object, layout: KVLayout, out: torch.Tensor | None = None,
             known_header: int | None = None) -> ReadResult:
        leaf = os.path.dirname(path)
        root_fd = os.open(os.path.dirname(leaf), os.O_RDONLY | os.O_DIRECTORY)
        fanout, name = os.path.basename(leaf), os.path.basename(path)
        try:
            if key is None or not batch:
                return read_block(io, root_fd, fanout, name, key, layout, out, known_header)  # type: ignore[arg-type]
            (result,) = read_blocks(io, root_fd, [ReadRequest(fanout, name, key, out, known_header)],  # type: ignore[arg-type]
                                    layout)
            if isinstance(result, Exception):
                raise result
            return result
        finally:
            os.close(root_fd)
    return read


@pytest.fixture(params=["python", "compiled", "python-batch", "compiled-batch"])
def read(request: pytest.FixtureRequest) -> ReadFn:
    """read_block with the Python twin's read_into or the compiled one, or read_blocks with either's
    read_many_into (which also takes the payload checksum)."""
    if request.param.startswith("compiled") and not native_built():
        pytest.skip("kvtier.tiers.disk._fileio is not built")
    return _read_at_path(routines(request.param.startswith("compiled")), batch=request.param.endswith("batch"))


KNOWN = stored_header_checksum(raw_object()[:HEADER_LEN])  # what a store that wrote KEY's object remembers
KNOWN_OR_NOT = [None, KNOWN]  # every damage check runs with and without the remembered header checksum


def test_reads_into_the_callers_buffer(read: ReadFn, tmp_path: Path) -> None:
    path = write(tmp_path, raw_object())
    out = torch.full(LAYOUT.block_shape, float("nan"), dtype=LAYOUT.dtype)
    result = read(path, KEY, LAYOUT, out)
    assert result.data.data_ptr() == out.data_ptr() and same_bits(out, make_block(3))
    assert result.key == KEY and result.size == HEADER_LEN + LAYOUT.page_size_bytes
    # The per-thread byte view of `out` is reused; a second read into it must still be whole.
    out.fill_(float("nan"))
    assert same_bits(read(path, KEY, LAYOUT, out).data, make_block(3))


def test_alternating_output_buffers_get_each_read_and_damage_is_caught_through_them(
        read: ReadFn, tmp_path: Path) -> None:
    # 256 KiB payloads: four checksum pieces, which the per-thread landing of `out` keeps.
    layout = KVLayout(num_layers=2, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.float16)
    keys = [make_key(i) for i in range(3)]
    blocks = [make_block(i, layout) for i in range(3)]
    paths = []
    for i, (key, block) in enumerate(zip(keys, blocks)):
        paths.append(str(tmp_path / f"{i}.kvb"))
        Path(paths[-1]).write_bytes(b"".join(bytes(p) for p in encode_block(key, block, layout)))
    out_a, out_b = (torch.empty(layout.block_shape, dtype=layout.dtype) for _ in range(2))
    held = {}  # what each buffer must hold: a read into one never lands in the other
    for i, out in [(0, out_a), (1, out_b), (2, out_a), (0, out_a), (2, out_b), (1, out_a)]:
        result = read(paths[i], keys[i], layout, out)
        held[id(out)] = blocks[i]
        assert result.data is out and all(same_bits(o, held[id(o)]) for o in (out_a, out_b) if id(o) in held)
    blob = bytearray(Path(paths[1]).read_bytes())
    blob[-100] ^= 0x01  # in the last checksum piece
    Path(paths[1]).write_bytes(blob)
    for out in (out_a, out_b, out_a):
        with pytest.raises(FormatError, match="payload checksum"):
            read(paths[1], keys[1], layout, out)


def test_reads_into_a_strided_buffer_and_without_one(read: ReadFn, tmp_path: Path) -> None:
    path = write(tmp_path, raw_object())
    strided = torch.empty(LAYOUT.block_shape[::-1], dtype=LAYOUT.dtype).permute(4, 3, 2, 1, 0)
    assert not strided.is_contiguous()
    assert same_bits(read(path, KEY, LAYOUT, strided).data.contiguous(), make_block(3))
    assert same_bits(strided.contiguous(), make_block(3))
    assert same_bits(read(path, KEY, LAYOUT).data, make_block(3))


@pytest.mark.parametrize("known", KNOWN_OR_NOT)
@pytest.mark.parametrize("position", range(HEADER_LEN))
def test_every_flipped_header_byte_is_caught(
        read: ReadFn, tmp_path: Path, position: int, known: int | None) -> None:
    blob = raw_object()
    blob[position] ^= 0x10
    with pytest.raises(FormatError):
        read(write(tmp_path, blob), KEY, LAYOUT, known_header=known)


@pytest.mark.parametrize("position", [HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + LAYOUT.page_size_bytes // 2, -1])
@pytest.mark.parametrize("known", KNOWN_OR_NOT)
def test_flipped_payload_byte_is_caught(
        read: ReadFn, tmp_path: Path, position: int, known: int | None) -> None:
    blob = raw_object()
    blob[position] ^= 0x01
    with pytest.raises(FormatError, match="payload checksum"):
        read(write(tmp_path, blob), KEY, LAYOUT, known_header=known)


SEGMENTS_AT = FIXED_HEADER_BYTES + 4 * LAYOUT.block_size  # the segment checksums: like the payload's, not known


@pytest.mark.parametrize("position", [h for h in range(14, HEADER_LEN - 8)
                                      if not FIXED_HEADER_BYTES - 8 <= h < FIXED_HEADER_BYTES
                                      and not SEGMENTS_AT <= h < SEGMENTS_AT + 8 * num_segments(LAYOUT)])
@pytest.mark.parametrize("known", KNOWN_OR_NOT)
def test_every_resealed_header_field_change_is_caught(
        read: ReadFn, tmp_path: Path, position: int, known: int | None) -> None:
    # The header checksum is valid again, so only comparing the fields with the key's can catch it.
    blob = raw_object()
    blob[position] ^= 0x01
    with pytest.raises(FormatError):
        read(write(tmp_path, reseal_header(blob)), KEY, LAYOUT, known_header=known)


@pytest.mark.parametrize("known", KNOWN_OR_NOT)
def test_another_keys_object_names_the_mismatch(read: ReadFn, tmp_path: Path, known: int | None) -> None:
    path = write(tmp_path, raw_object(make_key(4)))
    with pytest.raises(FormatError, match="block hash mismatch"):
        read(path, KEY, LAYOUT, known_header=known)


@pytest.mark.parametrize("other", [KEY._replace(token_ids=(7, 7, 7, 7)), KEY._replace(token_ids=(1, 2, 3)),
                                   KEY._replace(namespace=bytes(32)), KEY._replace(token_ids=(2 ** 32, 0, 0, 0)),
                                   KEY._replace(namespace=KEY.namespace[:31]),  # a prefix of the stored one
                                   KEY._replace(block_hash=KEY.block_hash[:16])])
def test_known_header_checksum_never_vouches_for_another_key(
        read: ReadFn, tmp_path: Path, other: object) -> None:
    # Same block hash, other identity: the remembered checksum matches the header, the key does not.
    with pytest.raises((FormatError, ValueError)):
        read(write(tmp_path, raw_object()), other, LAYOUT, known_header=KNOWN)  # type: ignore[arg-type]


def test_known_header_checksum_skips_building_the_expected_header(read: ReadFn, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, raw_object())

    def must_not_run(*args: object) -> None:
        raise AssertionError("the expected header was built")
    monkeypatch.setattr(block_verify, "pack_header", must_not_run)
    result = read(path, KEY, LAYOUT, known_header=KNOWN)
    assert same_bits(result.data, make_block(3)) and result.header_checksum == KNOWN
    with pytest.raises(AssertionError, match="expected header was built"):
        read(path, KEY, LAYOUT)


def test_stale_known_header_checksum_falls_back_to_the_full_check(read: ReadFn, tmp_path: Path) -> None:
    # Another writer's copy of the same key (shared folder), or a record from before a rewrite.
    result = read(write(tmp_path, raw_object()), KEY, LAYOUT, known_header=KNOWN ^ 1)
    assert same_bits(result.data, make_block(3)) and result.header_checksum == KNOWN


@pytest.mark.parametrize("change", [-1, 1, -LAYOUT.page_size_bytes])
def test_short_or_long_file_is_caught(read: ReadFn, tmp_path: Path, change: int) -> None:
    blob = raw_object()
    blob = blob[:change] if change < 0 else blob + b"\0" * change
    with pytest.raises(FormatError):
        read(write(tmp_path, blob), KEY, LAYOUT)


def test_wrong_out_is_never_half_written_as_a_result(read: ReadFn, tmp_path: Path) -> None:
    # An out of another dtype is not a direct target: the read lands in a fresh tensor, then copies.
    path = write(tmp_path, raw_object())
    out = torch.zeros(LAYOUT.block_shape, dtype=torch.float32)
    result = read(path, KEY, LAYOUT, out)
    assert result.data is out and torch.equal(out, make_block(3).float())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("shared", [False, True])
def test_store_reads_leave_no_descriptor_open(tmp_path: Path, shared: bool, native: bool) -> None:
    store = open_store(tmp_path, shared=shared, native_io=native)
    keys = [make_key(i) for i in range(5)]
    for i, key in enumerate(keys):
        store.put(key, make_block(i))
    damaged = store.path_of(keys[0].block_hash)
    blob = bytearray(Path(damaged).read_bytes())
    blob[-1] ^= 0xFF
    Path(damaged).write_bytes(blob)
    before = open_fds()
    out = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
    for _ in range(20):
        for i, key in enumerate(keys[1:], start=1):
            assert same_bits(store.get(key, out=out), make_block(i))
    assert store.get(keys[0]) is None and store.stats.corrupt == 1  # the damaged one: a miss
    assert open_fds() == before
    store.close()


def test_store_remembers_header_checksums_from_puts_and_from_verified_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    real_pack = block_verify.pack_header
    monkeypatch.setattr(block_verify, "pack_header", lambda *args: built.append(1) or real_pack(*args))
    store = open_store(tmp_path)
    store.put(KEY, make_block(3))
    built.clear()
    assert same_bits(store.get(KEY), make_block(3)) and built == []  # known since the put
    store.close()
    again = open_store(tmp_path)  # a restart knows sizes only
    assert same_bits(again.get(KEY), make_block(3)) and len(built) == 1  # full check, then remembered
    assert same_bits(again.get(KEY), make_block(3)) and len(built) == 1
    again.close()
