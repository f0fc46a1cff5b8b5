"""Headerless block files by plain Python buffered file I/O: the bench's `python` side, and --calibrate's tier.

One file per block, `ab/<hex><suffix>` beside the tier's objects (the same folders and disk region: on
a virtual disk placement alone moves a ratio); no header, checksum or rename. Not a ceiling: each
Python call releases and retakes the GIL, which the tier's one compiled call per object does not
(fio is the ceiling, bench/fio.py); it shows what the same I/O costs written in Python.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import torch

from kvtier.bench.workload import BlockOp
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.errors import TierIOError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.disk.names import FANOUT_DIRS, object_relpath
from kvtier.tiers.format.codecs import tensor_bytes
from kvtier.types import BlockHash, TierKind

PYTHON_SUFFIX = ".pyio"  # the python side's files
TIER_SUFFIX = ".tier"  # --calibrate's tier files; as long as PYTHON_SUFFIX, so both sides' names are alike


class PythonFileTier(TierStore):
    """Block files `ab/<hex><suffix>` under `config.path`, no checks, no eviction of its own.

    As the python side, `run(op)` writes one of `pool`'s payloads (op.data_index) or reads into a
    per-thread buffer; as a tier (--calibrate), `put`/`get` do the same I/O behind the TierStore API.
    """

    kind = TierKind.DISK

    def __init__(self, layout: KVLayout, config: DiskTierConfig, *, suffix: str = TIER_SUFFIX,
                 pool: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(layout)
        self.config = config
        self.folder = config.path
        self.suffix = suffix
        self._payloads = [tensor_bytes(t) for t in pool]
        self._local = threading.local()
        for name in FANOUT_DIRS:  # the tier's fan-out, made here when --calibrate puts this class in its place
            os.makedirs(os.path.join(self.folder, name), exist_ok=True)

    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def used_bytes(self) -> int:
        return self.num_blocks * self.layout.page_size_bytes

    @property
    def num_blocks(self) -> int:
        """Counted from the folder (NOTE: no counter, so neither use pays a lock per op)."""
        return sum(1 for _ in self._files())

    def path_of(self, block_hash: BlockHash) -> str:
        return f"{self.folder}/{object_relpath(block_hash, self.suffix)}"

    def run(self, op: BlockOp) -> bool:
        """Do one op of the python side; always True (its reads never miss on purpose)."""
        if op.kind == "write":
            self.write(op)
        else:
            self.read(op)
        return True

    def write(self, op: BlockOp) -> None:
        write_file(self.path_of(op.key.block_hash), self._payloads[op.data_index], self.config.fsync)

    def read(self, op: BlockOp) -> None:
        """Read the op's block into this thread's buffer; a missing or short file raises TierIOError."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(self.layout.page_size_bytes))
        path = self.path_of(op.key.block_hash)
        try:
            got = read_file_into(path, buf)
        except FileNotFoundError as exc:
            raise TierIOError(f"python side: block file {path} is missing; "
                              "the folder was changed during the run") from exc
        if got != len(buf):
            raise TierIOError(f"python side: {path} has {got} bytes, expected {len(buf)}")

    def contains(self, block_hash: BlockHash) -> bool:
        return os.path.exists(self.path_of(block_hash))

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        self.check_block(data)
        write_file(self.path_of(key.block_hash), tensor_bytes(data), self.config.fsync)

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        direct = out is not None and out.is_contiguous() and out.dtype == self.layout.dtype
        target = out if direct and out is not None else torch.empty(self.layout.block_shape, dtype=self.layout.dtype)
        buf = tensor_bytes(target)
        try:
            got = read_file_into(self.path_of(key.block_hash), buf)
        except FileNotFoundError:
            return None
        if got != buf.nbytes:
            return None
        return out.copy_(target) if out is not None and not direct else target

    def pin(self, block_hash: BlockHash) -> None:
        pass  # nothing is ever evicted behind the caller's back

    def unpin(self, block_hash: BlockHash) -> None:
        pass

    def evict(self, block_hash: BlockHash) -> bool:
        try:
            os.unlink(self.path_of(block_hash))
        except FileNotFoundError:
            return False
        return True

    def remove_all(self) -> int:
        """Delete every file of this suffix (the python side's, for --keep); returns how many."""
        removed = 0
        for path in self._files():
            os.unlink(path)
            removed += 1
        return removed

    def _files(self) -> Iterator[str]:
        for root, _dirs, files in os.walk(self.folder):
            yield from (os.path.join(root, name) for name in files if name.endswith(self.suffix))


def write_file(path: str, payload: memoryview, fsync: bool) -> None:
    """open, write all, optional fsync, close: the cheapest durable write Python has."""
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < len(payload):
            written += f.write(payload[written:])
        if fsync:
            os.fsync(f.fileno())


def read_file_into(path: str, buf: memoryview) -> int:
    """open, readinto until `buf` is full or the file ends, close; the bytes read."""
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:
                break
            got += n
    return got
