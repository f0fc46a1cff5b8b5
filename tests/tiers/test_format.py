"""The block object format: round trips for every codec and dtype, and corruption always detected."""
from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.format import (
    FIXED_HEADER_BYTES,
    decode_block,
    decode_header,
    encode_block,
    header_length,
    verify_object,
)
from kvtier.types import BlockHash, Namespace

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float16)


def make_key(seed: int, namespace: bytes = b"ns", num_tokens: int = 4) -> BlockKey:
    return BlockKey(Namespace(hashlib.sha256(namespace).digest()),
                    BlockHash(hashlib.sha256(seed.to_bytes(8, "little")).digest()),
                    tuple(range(seed, seed + num_tokens)))


def make_block(layout: KVLayout, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layout.block_shape, generator=gen).to(layout.dtype)


def encode(key: BlockKey, data: torch.Tensor, layout: KVLayout, codec: str) -> bytes:
    return b"".join(bytes(part) for part in encode_block(key, data, layout, codec))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_identical(codec: str, dtype: torch.dtype) -> None:
    layout = KVLayout(num_layers=3, num_kv_heads=4, head_dim=16, block_size=16, dtype=dtype)
    key, data = make_key(7, num_tokens=16), make_block(layout, seed=1)
    blob = bytearray(encode(key, data, layout, codec))
    header, out = decode_block(blob, key, layout)
    assert header.key == key and header.codec == codec and header.dtype == dtype
    assert header.object_bytes == len(blob) and header.header_len % 64 == 0
    assert out.shape == layout.block_shape and out.dtype == dtype
    assert torch.equal(bits(out), bits(data))


def test_raw_decode_of_writable_buffer_shares_memory() -> None:
    key, data = make_key(1), make_block(LAYOUT)
    blob = bytearray(encode(key, data, LAYOUT, "raw"))
    _, out = decode_block(blob, key, LAYOUT)
    out.zero_()
    assert not any(blob[decode_header(blob).header_len:])


def test_zstd_compresses_bf16_normal_data() -> None:
    layout = KVLayout(num_layers=4, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.bfloat16)
    parts = encode_block(make_key(2, num_tokens=16), make_block(layout), layout, "zstd")
    assert len(parts[1]) < 0.8 * layout.page_size_bytes


def test_head_range_is_recorded() -> None:
    layout = KVLayout(num_layers=2, num_kv_heads=4, head_dim=8, block_size=4, dtype=torch.float32)
    part = torch.randn(2, 2, 2, 4, 8)
    parts = encode_block(make_key(3), part, layout, "raw", head_range=(2, 4))
    header, out = decode_block(bytearray(b"".join(bytes(p) for p in parts)), layout=layout)
    assert (header.head_start, header.head_end) == (2, 4) and torch.equal(out, part)


def test_encode_rejects_wrong_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match=r"shape \[2, 2, 2, 4, 8\]"):
        encode_block(make_key(0), torch.zeros(2, 2, 2, 4, 7, dtype=torch.float16), LAYOUT)
    with pytest.raises(ValueError, match="float16"):
        encode_block(make_key(0), torch.zeros(LAYOUT.block_shape), LAYOUT)
    with pytest.raises(ValueError, match="32 bytes"):
        encode_block(BlockKey(Namespace(b"x"), BlockHash(b"y" * 32), ()), make_block(LAYOUT), LAYOUT)


@pytest.mark.parametrize("token", [-1, 2 ** 32, 1.5, "a", None])
def test_encode_rejects_token_ids_no_header_can_hold(token: object) -> None:
    key = make_key(0)._replace(token_ids=(token, 0, 0, 0))
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 2\*\*32\)"):
        encode_block(key, make_block(LAYOUT), LAYOUT)  # type: ignore[arg-type]


def test_mismatches_are_named() -> None:
    key, data = make_key(4), make_block(LAYOUT)
    blob = encode(key, data, LAYOUT, "raw")
    with pytest.raises(FormatError, match="namespace mismatch"):
        decode_block(blob, make_key(4, namespace=b"other tenant"), LAYOUT)
    with pytest.raises(FormatError, match="block hash mismatch"):
        decode_block(blob, make_key(5)._replace(token_ids=key.token_ids), LAYOUT)
    with pytest.raises(FormatError, match="token ids mismatch"):
        decode_block(blob, key._replace(token_ids=(9, 9, 9, 9)), LAYOUT)
    other = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)
    with pytest.raises(FormatError, match="layout mismatch"):
        decode_block(blob, key, other)


def test_short_and_empty_inputs_raise_format_error() -> None:
    for blob in (b"", b"KVTIERB", bytes(FIXED_HEADER_BYTES - 1)):
        with pytest.raises(FormatError):
            header_length(blob)
        with pytest.raises(FormatError):
            decode_block(blob)


_BLOBS = {codec: encode(make_key(11), make_block(LAYOUT, 3), LAYOUT, codec) for codec in ("raw", "zstd")}
_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(codec=st.sampled_from(["raw", "zstd"]), data=st.data())
def test_any_bit_flip_is_detected(codec: str, data: st.DataObject) -> None:
    blob = bytearray(_BLOBS[codec])
    position = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[position // 8] ^= 1 << (position % 8)
    with pytest.raises(FormatError):
        decode_block(blob, make_key(11), LAYOUT)


@_FAST
@given(codec=st.sampled_from(["raw", "zstd"]), data=st.data())
def test_any_truncation_or_extension_is_detected(codec: str, data: st.DataObject) -> None:
    blob = _BLOBS[codec]
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(FormatError):
        decode_block(blob[:cut])
    with pytest.raises(FormatError):
        decode_block(blob + data.draw(st.binary(min_size=1, max_size=64)))


@_FAST
@given(garbage=st.binary(max_size=600), keep_magic=st.booleans())
def test_garbage_raises_only_format_error(garbage: bytes, keep_magic: bool) -> None:
    blob = (_BLOBS["raw"][:14] + garbage) if keep_magic else garbage
    with pytest.raises(FormatError):
        decode_block(blob, make_key(11), LAYOUT)


@_FAST
@given(data=st.data())
def test_spliced_header_fields_raise_only_format_error(data: st.DataObject) -> None:
    # Overwrite a run of header bytes and fix nothing: the header checksum must catch it.
    blob = bytearray(_BLOBS["zstd"])
    start = data.draw(st.integers(0, 200))
    patch = data.draw(st.binary(min_size=1, max_size=16))
    if bytes(blob[start:start + len(patch)]) == patch:
        return
    blob[start:start + len(patch)] = patch
    with pytest.raises(FormatError):
        decode_block(blob)


def reseal(blob: bytearray) -> bytearray:
    """Recompute both checksums, as a buggy or hostile writer would, so the field checks are exercised."""
    import struct

    import xxhash

    header_len = struct.unpack_from("<I", blob, 10)[0]
    if FIXED_HEADER_BYTES <= header_len <= len(blob):
        struct.pack_into("<Q", blob, FIXED_HEADER_BYTES - 8, xxhash.xxh3_64_intdigest(bytes(blob[header_len:])))
        struct.pack_into("<Q", blob, header_len - 8, xxhash.xxh3_64_intdigest(bytes(blob[:header_len - 8])))
    return blob


@_FAST
@given(codec=st.sampled_from(["raw", "zstd"]), data=st.data())
def test_resealed_nonsense_raises_only_format_error(codec: str, data: st.DataObject) -> None:
    blob = bytearray(_BLOBS[codec])
    start = data.draw(st.integers(14, len(blob) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=12))
    blob[start:start + len(patch)] = patch
    try:
        header, out = decode_block(reseal(blob))
    except FormatError:
        return
    assert out.shape == header.block_shape  # a consistent object may decode, but only to its own shape


def test_resealed_zstd_garbage_payload_is_format_error() -> None:
    blob = bytearray(_BLOBS["zstd"])
    header_len = decode_header(blob).header_len
    blob[header_len:header_len + 4] = bytes(4)  # the zstd frame magic
    with pytest.raises(FormatError, match="zstd"):
        decode_block(reseal(blob))


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_checksum_in_pieces_is_xxh3_of_the_whole(size: int) -> None:
    import xxhash

    from kvtier.tiers.format import (
        CHECKSUM_CHUNK_BYTES,
        checksum_pieces,
        payload_checksum,
        pieces_checksum,
    )

    blob = bytes(range(256)) * (size // 256 + 1)
    pieces = checksum_pieces(blob[:size])
    assert all(piece.nbytes <= CHECKSUM_CHUNK_BYTES for piece in pieces)  # python-xxhash keeps the GIL for these
    assert payload_checksum(blob[:size]) == pieces_checksum(pieces) == xxhash.xxh3_64_intdigest(blob[:size])


def test_tensor_bytes_views_contiguous_memory_and_keeps_it_alive() -> None:
    import gc
    import weakref

    from kvtier.tiers.format.codecs import tensor_bytes

    data = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    view = tensor_bytes(data)
    assert view.nbytes == 12 and not view.readonly
    view[0:2] = bytes(2)  # writes land in the tensor
    assert data[0, 0] == 0 and bytes(view[2:4]) == data[0, 1:2].view(torch.uint8).numpy().tobytes()
    alive = weakref.ref(data)
    del data
    gc.collect()
    assert alive() is not None  # the view owns the tensor's memory
    strided = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()
    assert bytes(tensor_bytes(strided)) == strided.contiguous().view(torch.uint8).numpy().tobytes()


def test_a_raw_header_carries_each_segments_checksum_and_a_shards_ranges() -> None:
    import dataclasses

    import xxhash

    from kvtier.tiers.format import num_segments, segment_bytes

    layout = dataclasses.replace(LAYOUT, first_layer=3, first_kv_head=2)
    data = torch.randn(layout.block_shape).to(layout.dtype)
    header_bytes, payload = encode_block(make_key(1), data, layout, "raw")
    header = decode_header(header_bytes)
    assert (header.first_layer, header.head_start, header.head_end) == (3, 2, 4)
    seg, flat = segment_bytes(layout), memoryview(payload).cast("B")
    expected = [xxhash.xxh3_64_intdigest(flat[i * seg:(i + 1) * seg]) for i in range(num_segments(layout))]
    assert list(memoryview(header.segment_checksums).cast("Q")) == expected


def test_an_object_without_its_segment_table_is_verified_whole() -> None:
    """encode_block(segments=False), as the remote tier writes: a shorter header, flags 0, the same
    payload checksum; verify_raw_header reads each kind only when told which it expects."""
    from kvtier.tiers.format import header_bytes_for, verify_raw_header

    data = torch.randn(LAYOUT.block_shape).to(LAYOUT.dtype)
    key = make_key(1)
    with_table, _ = encode_block(key, data, LAYOUT)
    without, same_payload = encode_block(key, data, LAYOUT, segments=False)
    header = decode_header(without)
    assert len(without) == header_bytes_for(len(key.token_ids)) < len(with_table)
    assert header.segment_checksums == b"" and header.payload_checksum == decode_header(with_table).payload_checksum
    assert torch.equal(verify_object(bytes(without) + bytes(same_payload), key, LAYOUT)[1], data)
    assert verify_raw_header(bytearray(without), key, LAYOUT, segments=False) == header.payload_checksum
    with pytest.raises(FormatError):
        verify_raw_header(bytearray(without), key, LAYOUT)
    with pytest.raises(FormatError):
        verify_raw_header(bytearray(with_table), key, LAYOUT, segments=False)


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_a_page_aligned_header_puts_the_payload_on_a_page_and_says_so_in_its_flags(codec: str) -> None:
    """encode_block(page_aligned=True), as the disk tier's O_DIRECT mode writes: the header padded to
    4096 bytes (flags bit 1), the same payload and checksums; a header whose length does not fit its
    flag is damage, and verify_raw_header reads each kind only when told which it expects."""
    from kvtier.tiers.format import header_bytes_for, verify_raw_header
    from kvtier.tiers.format.header import (
        FLAG_PAGE_ALIGNED,
        PAGE_ALIGN,
        U32,
        checksum_of_header,
    )

    data, key = make_block(LAYOUT, 3), make_key(3)
    plain_header, _ = encode_block(key, data, LAYOUT, codec)
    header, payload = encode_block(key, data, LAYOUT, codec, page_aligned=True)
    assert len(header) == header_bytes_for(len(key.token_ids), 0 if codec == "zstd" else 16, True) == PAGE_ALIGN
    decoded = decode_header(header)
    assert (decoded.header_len, decoded.payload_checksum) == (PAGE_ALIGN, decode_header(plain_header).payload_checksum)
    assert torch.equal(decode_block(bytes(header) + bytes(payload), key, LAYOUT)[1], data)
    if codec == "raw":
        assert verify_raw_header(bytearray(header), key, LAYOUT, page_aligned=True) == decoded.payload_checksum
        with pytest.raises(FormatError):
            verify_raw_header(bytearray(header), key, LAYOUT)
        with pytest.raises(FormatError):
            verify_raw_header(bytearray(plain_header), key, LAYOUT, page_aligned=True)
    flags_at = FIXED_HEADER_BYTES - 22  # flags u16, num_tokens u32, payload_len u64, payload_checksum u64
    for forged_flags, base in ((0, header), (FLAG_PAGE_ALIGNED, plain_header)):  # the flag and the length disagree
        forged = bytearray(base)
        forged[flags_at:flags_at + 2] = (forged_flags | (U32.unpack_from(base, flags_at)[0] & 1)).to_bytes(2, "little")
        forged[-8:] = checksum_of_header(forged).to_bytes(8, "little")
        with pytest.raises(FormatError, match="does not fit"):
            decode_header(forged)


def test_segment_checksums_on_a_compressed_payload_are_refused() -> None:
    from kvtier.tiers.format import encode_header, num_segments

    forged = encode_header(make_key(1), LAYOUT, "zstd", 100, 0, segments=bytes(8 * num_segments(LAYOUT)))
    with pytest.raises(FormatError, match="segment checksums on a 'zstd' payload"):
        decode_header(forged)


def test_storage_views_cut_a_strided_tensor_into_its_runs_and_refuse_overlaps_and_too_many() -> None:
    from kvtier.tiers.format.codecs import StorageViews

    views = StorageViews()
    whole = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    runs = views.runs(whole[:, :, :4], max_runs=8)  # 6 runs of 4 floats
    assert runs is not None and [bytes(r) for r in runs] == [whole[i, j, :4].numpy().tobytes()
                                                           for i in range(2) for j in range(3)]
    runs[0][:4] = bytes(4)  # writable, into the tensor itself
    assert whole[0, 0, 0] == 0 and whole[0, 0, 1] == 1
    assert len(views.runs(whole, max_runs=1) or []) == 1  # contiguous: one run
    assert views.runs(whole[:, :, :4], max_runs=5) is None
    assert views.runs(torch.zeros(4).expand(3, 4), max_runs=8) is None  # broadcast: the runs overlap
    assert views.runs(torch.zeros(0, 4), max_runs=8) is None


def test_storage_views_land_each_tensors_runs_in_its_own_memory_when_a_batch_mixes_tensors() -> None:
    from kvtier.tiers.format.codecs import StorageViews

    views = StorageViews()
    first, second = torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    for target, fill in ((first[:, :, :4], 1), (second[:, :, 4:], 2), (first[:, :, 4:], 3), (second[:, :, :4], 4)):
        for run in views.runs(target, max_runs=8) or []:
            run[:] = torch.full((4,), float(fill)).numpy().tobytes()
    assert torch.equal(first[:, :, :4], torch.full((2, 3, 4), 1.0)) and torch.equal(first[:, :, 4:], torch.full((2, 3, 4), 3.0))
    assert torch.equal(second[:, :, 4:], torch.full((2, 3, 4), 2.0)) and torch.equal(second[:, :, :4], torch.full((2, 3, 4), 4.0))
    tail = torch.zeros(64)[60:].view(2, 2)  # the last bytes of a storage: still inside it
    runs = views.runs(tail, max_runs=1)
    assert runs is not None and len(runs) == 1 and len(runs[0]) == 16


def test_batch_runs_cut_each_block_of_a_strided_batch_as_runs_would_and_refuse_overlapping_blocks() -> None:
    from kvtier.tiers.format.codecs import StorageViews

    views = StorageViews()
    kv = torch.arange(2 * 3 * 40 * 4, dtype=torch.float32).reshape(2, 3, 40, 4)  # [K/V, heads, tokens, dim]
    blocks = kv[:, :, :32].view(2, 3, 4, 8, 4).permute(2, 0, 1, 3, 4)  # 4 blocks of 8 tokens, interleaved
    batch = views.batch_runs(blocks, max_runs=8)
    assert batch is not None and len(batch) == 4
    for block, runs in zip(blocks.unbind(0), batch):
        assert [bytes(r) for r in runs] == [bytes(r) for r in StorageViews().runs(block, max_runs=8) or []]
    assert views.batch_runs(blocks, max_runs=5) is None  # 6 runs a block
    assert views.batch_runs(torch.zeros(2, 3, 4)[:1].expand(3, 3, 4), max_runs=8) is None  # one block thrice
    overlapping = torch.zeros(64).as_strided((3, 2, 4), (4, 8, 1))  # block i+1 starts inside block i's runs
    assert views.batch_runs(overlapping, max_runs=8) is None
    one = views.batch_runs(torch.zeros(1, 2, 4), max_runs=1)
    assert one is not None and [len(r) for r in one[0]] == [32]


def test_payload_checksums_compiled_and_twin_give_the_format_values() -> None:
    """The compiled one-pass checksums equal the twin's, which are xxh3_64 of the payload and of each run."""
    import xxhash

    from kvtier.tiers.format import checksum

    if checksum._checksums is None:
        pytest.skip("kvtier.tiers.format._checksums is not built")
    gen = torch.Generator().manual_seed(5)
    for size, segment in ((0, 8), (1, 8), (4096, 4096), (10000, 4096), (262144, 4096), (333, 1)):
        payload = bytes(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=gen).tolist())
        runs = [payload[at:at + segment] for at in range(0, size, segment)]
        expected = (xxhash.xxh3_64_intdigest(payload),
                    b"".join(xxhash.xxh3_64_intdigest(r).to_bytes(8, "little") for r in runs))
        assert checksum._checksums.payload_checksums(payload, segment) == expected
        assert checksum.py_payload_checksums(payload, segment) == expected
    for bad in (0, -4):
        with pytest.raises(ValueError):
            checksum._checksums.payload_checksums(b"ab", bad)
        with pytest.raises(ValueError):
            checksum.py_payload_checksums(b"ab", bad)
