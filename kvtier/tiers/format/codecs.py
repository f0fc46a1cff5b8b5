"""Payload codecs of the block object: `raw` (the tensor's bytes) and `zstd` on byte planes.

Byte planes: element i's byte b goes to plane b, so the sign/exponent bytes of fp16/bf16 sit
together and compress well, while the noisy mantissa bytes barely cost the compressor time.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import threading

import numpy as np
import numpy.typing as npt
import torch
import zstandard

from kvtier.errors import FormatError

CODEC_IDS: dict[str, int] = {"raw": 0, "zstd": 1}
CODEC_NAMES: dict[int, str] = {code: name for name, code in CODEC_IDS.items()}
ZSTD_LEVEL = 1  # the fastest level; higher ones gain little on float planes (README: codec figures)

_local = threading.local()  # NOTE: zstd contexts are not thread-safe; one pair per thread


def tensor_bytes(data: torch.Tensor) -> memoryview:
    """The bytes of a tensor, flat: a writable view of its own memory when it is a contiguous CPU
    tensor, else of a contiguous CPU copy. The view keeps the tensor alive.

    NOTE: built with ctypes rather than `view(torch.uint8).numpy()`: every torch call that
    dispatches an op drops and retakes the GIL, and with a busy scheduler thread each retake can
    wait a whole switch interval (5 ms). This path calls only attribute getters, which keep it.
    """
    if not (data.is_cpu and data.is_contiguous()):
        data = data.detach().to("cpu").contiguous()
    array = _byte_array(data.nbytes).from_address(data.data_ptr())
    array._kvtier_owner = data  # type: ignore[attr-defined]  # NOTE: the memory's owner lives as long as the view
    return memoryview(array).cast("B")


@functools.lru_cache(maxsize=64)
def _byte_array(num_bytes: int) -> type[ctypes.Array[ctypes.c_ubyte]]:
    """The ctypes array type of `num_bytes` bytes, built once per size (building it was a quarter of
    tensor_bytes, which every read into a caller's buffer calls)."""
    return ctypes.c_ubyte * num_bytes


class StorageViews:
    """Writable views of strided CPU tensors' bytes, one contiguous run each, built from one view per
    underlying storage: for a batch of reads that land in slices of a few large tensors (LayerStore's
    K/V output: one `[bs, dim]` run per head of K and of V), so that each file's bytes are copied once,
    by the read itself, at the cost of a few slices per read. The views keep the storages alive.
    """

    def __init__(self) -> None:
        self._whole: dict[tuple[int, int], memoryview] = {}
        self._last: tuple[int, int, memoryview] | None = None  # (address, bytes, view) of the last storage used

    def runs(self, data: torch.Tensor, max_runs: int) -> list[memoryview] | None:
        """The bytes of `data` as its contiguous runs in element order (what a `readv` fills as if
        `data` were contiguous), or None: not on the CPU, more than `max_runs` runs, or runs that
        overlap (a broadcast view)."""
        if not data.is_cpu:
            return None
        runs = _byte_runs(data.shape, data.stride(), data.element_size(), max_runs)
        if runs is None:
            return None
        offsets, length, span = runs
        whole, start = self._locate(data, span)
        return [whole[start + offset:start + offset + length] for offset in offsets]

    def batch_runs(self, blocks: torch.Tensor, max_runs: int) -> list[list[memoryview]] | None:
        """`runs` of each `blocks[i]` of a `[n, ...]` tensor, its geometry worked out once for the
        batch (a layer's K/V output cut into blocks: no tensor view per block), or None as `runs`
        says, or when two blocks' runs overlap."""
        if not blocks.is_cpu or blocks.dim() < 2 or not blocks.shape[0]:
            return None
        geometry = _batch_byte_runs(blocks.shape, blocks.stride(), blocks.element_size(), max_runs)
        if geometry is None:
            return None
        offsets, length, step, span = geometry
        whole, start = self._locate(blocks, span)
        firsts = [start + i * step for i in range(blocks.shape[0])]
        return [[whole[first + offset:first + offset + length] for offset in offsets] for first in firsts]

    def _locate(self, data: torch.Tensor, span: int) -> tuple[memoryview, int]:
        """A view of the storage holding `data`'s first `span` bytes, and where `data` starts in it."""
        address = data.data_ptr()
        # NOTE: memory inside a storage these views keep alive is that storage's (no other can own it):
        # a batch's next slice of the same tensor skips looking its storage up (half the cost of a call)
        last = self._last
        if last is None or not last[0] <= address <= last[0] + last[1] - span:
            storage = data.untyped_storage()
            base, size = storage.data_ptr(), storage.nbytes()
            whole = self._whole.get((base, size))
            if whole is None:
                array = (ctypes.c_ubyte * size).from_address(base)
                array._kvtier_owner = storage  # type: ignore[attr-defined]  # NOTE: the memory lives as long as the views
                whole = self._whole[(base, size)] = memoryview(array).cast("B")
            last = self._last = (base, size, whole)
        return last[2], address - last[0]


@functools.lru_cache(maxsize=64)
def _batch_byte_runs(shape: tuple[int, ...], strides: tuple[int, ...], item: int,
                     max_runs: int) -> tuple[tuple[int, ...], int, int, int] | None:
    """(`_byte_runs` offsets and run bytes of one block; bytes from one block to the next; bytes from
    the first element to the end of the last block's last run) of `[n, ...]` blocks, or None: a
    block's runs are not `_byte_runs`', or runs of two blocks overlap (a stride of 0 included)."""
    runs = _byte_runs(tuple(shape[1:]), tuple(strides[1:]), item, max_runs)
    if runs is None:
        return None
    offsets, length, span = runs
    step = strides[0] * item
    if shape[0] > 1:
        if step <= 0:
            return None
        every = sorted(first + offset for first in range(0, shape[0] * step, step) for offset in offsets)
        if any(b - a < length for a, b in itertools.pairwise(every)):
            return None
    return offsets, length, step, (shape[0] - 1) * step + span


@functools.lru_cache(maxsize=256)
def _byte_runs(shape: tuple[int, ...], strides: tuple[int, ...], item: int,
               max_runs: int) -> tuple[tuple[int, ...], int, int] | None:
    """(byte offset of each contiguous run, in element order; bytes a run; bytes from the first
    element to the end of the last run) of a strided tensor with non-negative strides, or None
    (empty, more than `max_runs` runs, or overlapping runs)."""
    if not all(shape):
        return None
    inner, run = len(shape), 1  # NOTE: the trailing dims that are contiguous make one run
    while inner and (shape[inner - 1] == 1 or strides[inner - 1] == run):
        inner -= 1
        run *= shape[inner]
    offsets = [0]
    for size, stride in zip(shape[:inner], strides[:inner]):
        offsets = [offset + i * stride for offset in offsets for i in range(size)]
        if len(offsets) > max_runs:
            return None
    ordered = sorted(offsets)
    if ordered[0] < 0 or any(b - a < run for a, b in zip(ordered, ordered[1:])):
        return None
    return tuple(offset * item for offset in offsets), run * item, (ordered[-1] + run) * item


def encode_payload(data: torch.Tensor, codec: str) -> memoryview:
    """The payload bytes of a block tensor (a view of its memory for "raw")."""
    raw = tensor_bytes(data)  # [num_bytes]
    if codec == "raw":
        return raw
    if codec == "zstd":
        planes = _to_planes(np.frombuffer(raw, dtype=np.uint8), data.element_size())  # [itemsize, num_elements]
        return memoryview(_compressor().compress(planes.data.cast("B")))
    raise ValueError(f"codec must be one of {sorted(CODEC_IDS)}, got {codec!r}")


def decode_payload(payload: memoryview, codec: str, dtype: torch.dtype,
                   shape: tuple[int, ...]) -> torch.Tensor:
    """The block tensor of a verified payload. Raises FormatError if it does not decode to `shape`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    num_bytes = itemsize
    for dim in shape:
        num_bytes *= dim
    if codec == "raw":
        flat = _frombuffer(payload)
    elif codec == "zstd":
        planes = np.frombuffer(_decompress(payload, num_bytes), dtype=np.uint8)
        flat = torch.from_numpy(_from_planes(planes, itemsize)).view(-1)  # [num_bytes]
    else:
        raise FormatError(f"unknown codec {codec!r}")
    if flat.numel() != num_bytes:
        raise FormatError(f"payload decodes to {flat.numel()} bytes, the layout needs {num_bytes}")
    return flat.view(dtype).view(shape)


def _to_planes(flat: npt.NDArray[np.uint8], itemsize: int) -> npt.NDArray[np.uint8]:
    # NOTE: one strided copy per plane: several times faster than numpy's or torch's generic uint8 transpose.
    elements = flat.reshape(-1, itemsize)  # [num_elements, itemsize]
    planes = np.empty((itemsize, elements.shape[0]), dtype=np.uint8)
    for b in range(itemsize):
        planes[b] = elements[:, b]
    return planes


def _from_planes(planes: npt.NDArray[np.uint8], itemsize: int) -> npt.NDArray[np.uint8]:
    by_plane = planes.reshape(itemsize, -1)  # [itemsize, num_elements]
    elements = np.empty((by_plane.shape[1], itemsize), dtype=np.uint8)
    for b in range(itemsize):
        elements[:, b] = by_plane[b]
    return elements


def _frombuffer(view: memoryview) -> torch.Tensor:
    if view.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    if view.readonly:  # torch would warn and alias immutable memory; copy once instead
        return torch.frombuffer(bytearray(view), dtype=torch.uint8)
    return torch.frombuffer(view, dtype=torch.uint8)


def _decompress(payload: memoryview, num_bytes: int) -> bytes:
    try:
        if zstandard.frame_content_size(payload) != num_bytes:
            raise FormatError(f"zstd frame does not announce the {num_bytes} bytes the layout needs")
        out = _decompressor().decompress(payload, max_output_size=num_bytes)
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd payload does not decode: {exc}") from None
    if len(out) != num_bytes:
        raise FormatError(f"zstd payload decodes to {len(out)} bytes, the layout needs {num_bytes}")
    return out


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return _local.compressor  # type: ignore[no-any-return]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor  # type: ignore[no-any-return]
