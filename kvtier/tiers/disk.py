"""DiskStore: the disk tier (local NVMe) and the shared-folder tier (NFS), one implementation.

One self-verifying object per block (`format.py`), named by its hash (`disk_paths.py`), published
whole (an O_TMPFILE inode linked into place, or a temporary name renamed; the file I/O is one
compiled call where built, `disk_native.py`); every read is verified, and any failure is a miss.
The folder is the truth: a new DiskStore on it rebuilds its index from the files.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass

import torch

from kvtier.config import DiskTierConfig, KVLayout
from kvtier.errors import FormatError, TierFullError, TierIOError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.disk_index import DiskIndex
from kvtier.tiers.disk_io import close_holding_gil, discard, probe_o_direct, unlink_quietly
from kvtier.tiers.disk_native import choose_publisher, reader
from kvtier.tiers.disk_paths import make_fanout, object_relpath, temp_name
from kvtier.tiers.disk_read import DamagedObjectError, read_block
from kvtier.tiers.disk_restart import rebuild_index
from kvtier.tiers.disk_tmpfile import find_linker
from kvtier.tiers.format import BufferLike, encode_block, stored_header_checksum
from kvtier.tiers.free_space import FreeSpace
from kvtier.types import BlockHash, TierKind

logger = logging.getLogger(__name__)
STALE_TEMP_AGE_S = 3600.0  # a temporary file this old in a shared folder has lost its writer


@dataclass(slots=True)
class PendingPut:
    """A put between its reservation and its commit (see DiskStore.prepare_put)."""

    key: BlockKey
    parts: list[BufferLike]
    size: int
    final_path: str

    def temp_path(self) -> str:
        """A new temporary name beside the object; built only where a write needs one (2.7 us hot)."""
        return os.path.join(os.path.dirname(self.final_path), temp_name(self.key.block_hash))


class DiskStore(TierStore):
    """Blocks as files under `config.path`: verified reads, atomic writes, a byte budget, LRU.

    Thread-safe: bookkeeping runs under one lock, file I/O outside it.
    """

    def __init__(self, layout: KVLayout, config: DiskTierConfig, *,
                 stale_temp_age_s: float = STALE_TEMP_AGE_S) -> None:
        super().__init__(layout)
        self.config = config
        self.kind = TierKind.SHARED if config.shared else TierKind.DISK
        self.root = os.path.abspath(config.path)
        self._root_slash = os.path.join(self.root, "")
        self._lock = threading.Lock()
        make_fanout(self.root)
        self.o_direct_supported = probe_o_direct(self.root) if config.shared else False
        # NOTE: shared folders keep temporary names: NFS has no O_TMPFILE, and other hosts' tools expect them
        self._linker = find_linker(self.root) if config.tmpfile and not config.shared else None
        self._publish_parts = choose_publisher(self._linker, config.native_io)
        self._read_into = reader(config.native_io)
        self._close_read = os.close if config.shared else close_holding_gil
        self._index = DiskIndex()
        self._free_space = FreeSpace(self.root)
        for victim in rebuild_index(self._index, self.root, config, stale_temp_age_s):
            unlink_quietly(victim, "evicted object")
            self.stats.evictions += 1

    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._index.used_bytes

    @property
    def num_blocks(self) -> int:
        with self._lock:
            return len(self._index)

    def path_of(self, block_hash: BlockHash) -> str:
        return self._root_slash + object_relpath(block_hash)  # NOTE: not os.path.join: 0.5 us per op

    def contains(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if block_hash in self._index:
                return True
        return self._discover(block_hash)

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        """Store one block; see TierStore.put.

        Raises:
            ValueError: data has the wrong shape or dtype.
            TierFullError: nothing evictable frees enough room (every resident block is pinned).
            TierIOError: the write failed (ENOSPC, EIO, ...); nothing was stored.
        """
        pending = self.prepare_put(key, data)
        if pending is None:
            return
        try:
            self._write(pending)
        except OSError as exc:
            raise self.abort_put(pending, exc) from exc
        self.commit_put(pending)

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The verified block, into `out` when given, or None on a miss (absent, corrupt, I/O error)."""
        if out is not None:
            self.check_block(out)
        found = self._lookup(key.block_hash)
        if found is None:
            return self._count_miss()
        path, known_header = found
        try:
            result = read_block(path, key, self.layout, out, self._close_read, known_header, self._read_into)
        except FileNotFoundError:
            self._forget(key.block_hash)
            return self._count_miss()
        except FormatError as exc:
            self._on_corrupt(key.block_hash, path, exc)
            return self._count_miss()
        except OSError as exc:
            logger.warning("disk tier read of %s failed: %s", path, exc)
            with self._lock:
                self.stats.io_errors += 1
            return self._count_miss()
        self._on_hit(key.block_hash, result.size, result.header_checksum)
        return result.data

    def pin(self, block_hash: BlockHash) -> None:
        self._discover(block_hash)
        with self._lock:
            self._index.pin(block_hash)

    def unpin(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._index.unpin(block_hash)

    def is_pinned(self, block_hash: BlockHash) -> bool:
        with self._lock:
            return self._index.is_pinned(block_hash)

    def evict(self, block_hash: BlockHash) -> bool:
        self._discover(block_hash)
        with self._lock:
            if self._index.is_pinned(block_hash):
                raise RuntimeError(f"evict of pinned block {block_hash.hex()[:16]}…; unpin it first")
            entry = self._index.remove(block_hash)
            if entry is None:
                return False
            self.stats.evictions += 1
        unlink_quietly(self.path_of(block_hash), "evicted object")
        self._free_space.removed(entry.size)
        return True

    # Phases of a put, shared with AsyncDiskStore, which runs the write on its executor.

    def prepare_put(self, key: BlockKey, data: torch.Tensor) -> PendingPut | None:
        """Encode the block and reserve room, evicting LRU objects; None if it is already stored."""
        self.check_block(data)
        if self.contains(key.block_hash):  # content-named and immutable: nothing to write
            with self._lock:
                self._index.touch(key.block_hash)
            return None
        parts = encode_block(key, data, self.layout, self.config.codec)
        size = sum(memoryview(p).nbytes for p in parts)
        self._reserve(size)
        return PendingPut(key, parts, size, self.path_of(key.block_hash))

    def write_pending(self, pending: PendingPut) -> None:
        """The file I/O of a put (any thread); raises OSError with nothing left behind."""
        self._write(pending)

    def commit_put(self, pending: PendingPut) -> None:
        self._free_space.wrote(pending.size)
        with self._lock:
            self._index.reserved_bytes -= pending.size
            self._index.add(pending.key.block_hash, pending.size, stored_header_checksum(pending.parts[0]))
            self.stats.puts += 1
            self.stats.bytes_written += pending.size

    def abort_put(self, pending: PendingPut, exc: OSError) -> TierIOError:
        """Release a failed put's reservation, count it, and return the error to raise."""
        with self._lock:
            self._index.reserved_bytes -= pending.size
            self.stats.io_errors += 1
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        remedy = ("free space on the filesystem or raise min_free_bytes so the tier evicts first"
                  if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the device and the mount")
        return TierIOError(f"disk tier write of {pending.size} bytes to {pending.final_path} failed "
                           f"({name}: {exc.strerror or exc}); the block was not stored; {remedy}")

    def _lookup(self, block_hash: BlockHash) -> tuple[str, int | None] | None:
        """`(path, known header checksum)` of an object this tier has (or, shared, can see)."""
        with self._lock:
            entry = self._index.get(block_hash)
        if entry is None and not self._discover(block_hash):
            return None
        return self.path_of(block_hash), entry.header_checksum if entry is not None else None

    # Internals.

    def _write(self, pending: PendingPut) -> None:
        try:
            self._publish(pending)
        except FileNotFoundError:  # NOTE: a fan-out folder removed since start (by hand, or a shared-folder gc)
            os.makedirs(os.path.dirname(pending.final_path), exist_ok=True)
            self._publish(pending)

    def _publish(self, pending: PendingPut) -> None:
        self._publish_parts(pending.final_path, pending.temp_path, pending.parts, self.config.fsync)

    def _reserve(self, size: int) -> None:
        self._free_space.refresh_if_stale()  # NOTE: outside the lock: statvfs is a syscall (an RPC on NFS)
        with self._lock:
            need = max(self._index.used_bytes + size - self.capacity_bytes,
                       self.config.min_free_bytes + size + self._index.reserved_bytes - self._free_space.estimate())
            victims = self._index.take_victims(need) if need > 0 else []
            if victims is None:
                self.stats.rejected += 1
                raise self._full_error(size, need)
            self._index.reserved_bytes += size
            self.stats.evictions += len(victims)
        for block_hash, victim_size in victims:
            self._hand_to_hook(block_hash)
            unlink_quietly(self.path_of(block_hash), "evicted object")
            self._free_space.removed(victim_size)

    def _full_error(self, size: int, need: int) -> TierFullError:
        idx = self._index
        return TierFullError(
            f"disk tier {self.root} is full: a {size}-byte block needs {need} bytes freed, but only "
            f"{idx.evictable_bytes()} of {idx.file_bytes} bytes in {len(idx)} objects are unpinned "
            f"(capacity_bytes={self.capacity_bytes}, min_free_bytes={self.config.min_free_bytes}, "
            f"{self._free_space.refresh()} bytes free on the filesystem); unpin blocks, raise capacity_bytes, "
            "or free space on the filesystem")

    def _hand_to_hook(self, block_hash: BlockHash) -> None:
        hook = self._eviction_hook
        if hook is None:
            return
        try:
            result = read_block(self.path_of(block_hash), None, self.layout)
        except (OSError, FormatError) as exc:
            logger.warning("evicted block %s was unreadable; not handed on: %s", block_hash.hex(), exc)
            return
        hook(result.key, result.data)

    def _discover(self, block_hash: BlockHash) -> bool:
        """Shared folders: index an object another process wrote. Local folders: no filesystem look-up."""
        if not self.config.shared:
            return False
        try:
            st = os.stat(self.path_of(block_hash))
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):  # e.g. a folder made at the name by hand: not an object
            return False
        with self._lock:
            if block_hash not in self._index:
                self._index.add(block_hash, st.st_size)
        return True

    def _on_hit(self, block_hash: BlockHash, size: int, header_checksum: int | None) -> None:
        # NOTE: reads do not touch mtime (a metadata write per read, a SETATTR on NFS), so after
        # a restart the LRU order is the order of writes.
        with self._lock:
            self._index.touch(block_hash, header_checksum)
            self.stats.hits += 1
            self.stats.bytes_read += size

    def _on_corrupt(self, block_hash: BlockHash, path: str, exc: FormatError) -> None:
        logger.warning("disk tier object %s failed verification (%s); %s", path, exc,
                       "quarantined" if self.config.shared else "removed")
        with self._lock:
            self.stats.corrupt += 1
        self._forget(block_hash)
        discard(path, self.root, self.config.shared, exc.inode if isinstance(exc, DamagedObjectError) else None)

    def _forget(self, block_hash: BlockHash) -> None:
        with self._lock:  # a pinned record stays until unpinned, even if another host removed the file
            if not self._index.is_pinned(block_hash):
                self._index.remove(block_hash)

    def _count_miss(self) -> torch.Tensor | None:
        with self._lock:
            self.stats.misses += 1
        return None
