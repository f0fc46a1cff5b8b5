"""DiskStore: blocks as self-verifying files in a folder (local NVMe or a shared NFS folder).

Verified reads, atomic writes (an O_TMPFILE inode linked into place where the folder allows it,
else a temporary name renamed onto the object), a byte budget plus a free-space floor, LRU
eviction, and a warm restart from the folder alone. Thread-safe: bookkeeping runs under one
lock, file I/O outside it.
"""
from __future__ import annotations

import errno
import itertools
import logging
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from kvtier.config import DiskTierConfig, KVLayout, SharedTierConfig
from kvtier.errors import TierFullError, TierIOError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.disk import planned
from kvtier.tiers.disk.direct import probe_direct
from kvtier.tiers.disk.discard import quarantine, remove_damaged
from kvtier.tiers.disk.fileio import routines
from kvtier.tiers.disk.folder import TierFolder, io_error
from kvtier.tiers.disk.free_space import FreeSpace
from kvtier.tiers.disk.index import DiskIndex
from kvtier.tiers.disk.names import object_name
from kvtier.tiers.disk.planned import ReadPlan
from kvtier.tiers.disk.publish import Publisher
from kvtier.tiers.disk.read import (
    DamagedObjectError,
    ReadRequest,
    ReadResult,
    read_block,
    read_blocks,
)
from kvtier.tiers.disk.restart import restart
from kvtier.tiers.disk.tmpfile import probe_linking
from kvtier.tiers.format import encode_block, max_object_bytes, stored_header_checksum
from kvtier.types import BlockHash, TierKind

logger = logging.getLogger(__name__)
_NOT_HERE = (errno.ELOOP, errno.ENOTDIR)  # a link at an object's name, or a linked fan-out folder


T = TypeVar("T")
R = TypeVar("R")
READ_BATCH_OBJECTS = 16
"""Objects `get_many` reads per compiled call: enough that the GIL hand-offs vanish, few enough that
two I/O threads interleave (one reads while the other verifies). A 4k-token SmolLM2 restore (256
objects of 738 KB, two threads) took the same time from 16 to 256 and ~20% longer at 4."""


MIN_THREAD_READ_BYTES = 1 << 20
"""A batch read gets one reader thread per this many bytes (up to `read_threads`): smaller batches
are read in the caller's thread, since handing runs over cost more than it won for SmolLM2's
24 KB one-layer blocks read back from the page cache (TieredCache, benches/bench_hf_cache.py)."""


class DiskStore(TierStore):
    """Blocks as files under `config.path`: a local disk (DiskTierConfig) or a shared folder
    (SharedTierConfig: other hosts' objects are found by name, damaged ones are quarantined).

    Raises:
        TierIOError: the folder cannot be made, opened, written or listed (the message says why and what to do).
    """

    def __init__(self, layout: KVLayout, config: DiskTierConfig | SharedTierConfig) -> None:
        super().__init__(layout)
        self.config = config
        self.shared = isinstance(config, SharedTierConfig)
        self.kind = TierKind.SHARED if self.shared else TierKind.DISK
        self.folder = TierFolder(config.path, config.dir_mode)
        self.root = self.folder.path
        self.folder.make_fanout()
        self._io = routines(config.native_io)
        # NOTE: shared folders keep temporary names: NFS has no O_TMPFILE, and other hosts' tools expect them
        tmpfile = isinstance(config, DiskTierConfig) and config.tmpfile
        via_proc = probe_linking(self.folder.fd, config.file_mode) if tmpfile else None
        self.direct = config.direct_io and probe_direct(self.folder.fd, config.file_mode)
        self._publisher = Publisher(self._io, self.folder, config.fsync, via_proc, config.file_mode, self.direct)
        self._max_object_bytes = max_object_bytes(layout)
        self._lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        self._closed = False
        self._index = DiskIndex()
        self._free_space = FreeSpace(self.root)
        try:
            self.stats.evictions += restart(self._index, self.folder, capacity_bytes=config.capacity_bytes,
                                            max_object_bytes=self._max_object_bytes, shared=self.shared,
                                            stale_temp_age_s=getattr(config, "stale_temp_age_s", 0.0))
        except OSError as exc:
            self.folder.close()
            raise io_error(f"listing disk tier folder {self.root}", self.root, exc) from exc

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

    @property
    def publishes_unnamed(self) -> bool:
        """Whether puts link O_TMPFILE inodes into place (else: temporary name, then rename)."""
        return self._publisher.via_proc is not None

    def path_of(self, block_hash: BlockHash) -> str:
        """The object's path, for tools and tests; the store itself opens it through the fan-out folder."""
        fanout, name = object_name(block_hash)
        return f"{self.root}/{fanout}/{name}"

    def contains(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if block_hash in self._index:
                return True
        return self._discover(block_hash)

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        """Store one block; see TierStore.put.

        Raises:
            TypeError, ValueError: data is not a block of this layout.
            TierFullError: nothing evictable frees enough room (every resident block is pinned).
            TierIOError: the write failed (ENOSPC, EIO, a linked fan-out folder, ...); nothing was stored.
        """
        self.check_block(data)
        if self.contains(key.block_hash):  # content-named and immutable: nothing to write
            with self._lock:
                self._index.touch(key.block_hash)
            return
        parts = encode_block(key, data, self.layout, self.config.codec, page_aligned=self.direct)
        size = sum(memoryview(p).nbytes for p in parts)
        self._reserve(size)
        fanout, name = object_name(key.block_hash)
        try:
            self._publisher.publish(key.block_hash, fanout, name, parts)
        except OSError as exc:
            raise self._abort_put(size, fanout, name, exc) from exc
        self._free_space.wrote(size)
        with self._lock:
            self._index.reserved_bytes -= size
            self._index.add(key.block_hash, size, stored_header_checksum(parts[0]))
            self.stats.puts += 1
            self.stats.bytes_written += size

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The verified block, into `out` when given, or None on a miss (absent, damaged, unreadable)."""
        if out is not None:
            self.check_block(out, "get")
        found, known_header = self._lookup(key.block_hash)
        if not found:
            return self._count_miss()
        fanout, name = object_name(key.block_hash)
        try:
            result: ReadResult | OSError | DamagedObjectError = read_block(self._io, self.folder.fd, fanout, name, key,
                                                                           self.layout, out, known_header, self.direct)
        except (OSError, DamagedObjectError) as exc:
            result = exc
        return self._served(key.block_hash, fanout, name, result)

    def get_many(self, keys: Sequence[BlockKey],
                 outs: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor | None]:
        """`get` of each key, into `outs` where given: the objects cut into runs of at most
        `READ_BATCH_OBJECTS`, each run read and checksummed in one compiled call (read_blocks, the
        GIL given up once per run instead of at every system call), up to `config.read_threads`
        runs at once on the tier's own reader threads, one per MIN_THREAD_READ_BYTES of the batch
        (one thread reading one object at a time reached 0.54-0.86 of four threads calling `get`,
        cold, 2 MiB objects: benches/bench_get_many.py)."""
        results: list[torch.Tensor | None] = [None] * len(keys)
        targets = self._outputs(keys, outs)
        for out in targets:
            if out is not None:
                self.check_block(out, "get")
        with self._lock:  # NOTE: one lock for the batch's look-ups, and one below for its hits
            entries = [self._index.get(key.block_hash) for key in keys]
        requests, where = [], []
        for index, (key, out, entry) in enumerate(zip(keys, targets, entries)):
            if entry is None and not self._discover(key.block_hash):
                self._count_miss()
                continue
            requests.append(ReadRequest(*object_name(key.block_hash), key, out,
                                        entry.header_checksum if entry is not None else None))
            where.append(index)
        root_fd = self.folder.fd
        outcomes = self._read_runs(requests, lambda run: read_blocks(self._io, root_fd, run, self.layout, self.direct))
        hits = []
        for index, request, result in zip(where, requests, outcomes):
            if isinstance(result, ReadResult):
                hits.append((request.key.block_hash, result))
                results[index] = result.data
            else:
                self._served(request.key.block_hash, request.fanout, request.name, result)
        with self._lock:
            for block_hash, result in hits:
                self._index.touch(block_hash, result.header_checksum)
                self.stats.bytes_read += result.size
            self.stats.hits += len(hits)
        return results

    def plan_reads(self, keys: Sequence[BlockKey]) -> ReadPlan | None:
        """A plan to read `keys` again with `read_planned`, if each is a raw object whose header
        this store verified before (a read or a write of its own); else None."""
        with self._lock:
            entries = [self._index.get(key.block_hash) for key in keys]
        checksums, sizes = [], []
        for entry in entries:
            if entry is None or entry.header_checksum is None:
                return None
            checksums.append(entry.header_checksum)
            sizes.append(entry.size)
        return planned.plan_reads(list(keys), checksums, sizes, self.layout, self.direct) if keys else None

    def read_planned(self, plan: ReadPlan, outs: torch.Tensor) -> bool:  # type: ignore[override]
        """Read `plan`'s objects into `outs[i]` (`[n, *block_shape]`, CPU, strided or not), each
        vouched for by its known header and payload checksums, in runs on the reader threads as
        `get_many` reads; False if any was not (outs then undefined: read them with `get_many`,
        which says what went wrong). Such an object's header checksum is forgotten, so no plan
        includes it before a read verifies it again. Hits count as `get_many`'s do; nothing is
        pinned, since nothing unverified can be served.

        Raises:
            ValueError: `outs` is not `[len(plan.keys), *block_shape]` of the layout's dtype.
        """
        calls = planned.planned_calls(plan, outs, self.layout)
        if calls is None or self._closed:
            return False
        root_fd = self.folder.fd
        outcomes = list(self._read_runs(calls, lambda run: self._io.read_many_known(root_fd, run, self.direct)))
        failed = [key.block_hash for key, outcome in zip(plan.keys, outcomes) if outcome is not True]
        with self._lock:
            if failed:
                for block_hash in failed:
                    entry = self._index.get(block_hash)
                    if entry is not None:
                        entry.header_checksum = None
                return False
            for key, (*_, size, checksum, _pieces) in zip(plan.keys, plan.objects):
                self._index.touch(key.block_hash, checksum)
                self.stats.bytes_read += size
            self.stats.hits += len(plan.keys)
        return True

    def _read_runs(self, items: list[T], read: Callable[[list[T]], list[R]]) -> Iterator[R]:
        """`read` of `items` cut into runs of at most READ_BATCH_OBJECTS, up to `config.read_threads`
        runs at once on the reader threads (one per MIN_THREAD_READ_BYTES of the batch), in order."""
        threads = max(1, min(self.config.read_threads, len(items),
                             len(items) * self.layout.page_size_bytes // MIN_THREAD_READ_BYTES))
        # NOTE: about four runs a thread, so a thread that drew slow objects does not hold the batch up
        per_run = min(READ_BATCH_OBJECTS, -(-len(items) // (4 * threads))) if threads > 1 else READ_BATCH_OBJECTS
        runs = [items[start:start + per_run] for start in range(0, len(items), per_run)]
        pool = self._reader_pool() if threads > 1 else None
        return itertools.chain.from_iterable(pool.map(read, runs) if pool is not None else map(read, runs))

    def _reader_pool(self) -> ThreadPoolExecutor | None:
        """The threads `get_many` reads runs on, made at the first batch that has more than one run;
        None once closed (the reads then fail in the caller's thread, as misses)."""
        with self._lock:
            if self._closed:
                return None
            if self._readers is None:
                self._readers = ThreadPoolExecutor(self.config.read_threads, thread_name_prefix="kvtier-disk-read")
            return self._readers

    def _served(self, block_hash: BlockHash, fanout: str, name: str,
                result: ReadResult | OSError | DamagedObjectError) -> torch.Tensor | None:
        """The block of one read, or None with the miss, damage or I/O error accounted for."""
        if isinstance(result, FileNotFoundError):
            self._forget(block_hash)
            return self._count_miss()
        if isinstance(result, DamagedObjectError):
            self._on_damaged(block_hash, fanout, name, result)
            return self._count_miss()
        if isinstance(result, OSError):
            self._on_read_error(block_hash, fanout, name, result)
            return self._count_miss()
        self._on_hit(block_hash, result.size, result.header_checksum)
        return result.data

    def pin(self, block_hash: BlockHash) -> None:
        self._discover(block_hash)
        with self._lock:
            self._index.pin(block_hash)

    def pin_if_held(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if block_hash in self._index:
                self._index.pin(block_hash)
                return True
        return super().pin_if_held(block_hash)  # NOTE: a shared folder's object another process wrote

    def pin_known(self, block_hashes: Sequence[BlockHash]) -> list[bool]:
        with self._lock:
            held = [block_hash in self._index for block_hash in block_hashes]
            for block_hash, is_held in zip(block_hashes, held):
                if is_held:
                    self._index.pin(block_hash)
        return held

    def unpin(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._index.unpin(block_hash)

    def unpin_many(self, block_hashes: Iterable[BlockHash]) -> None:
        with self._lock:
            for block_hash in block_hashes:
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
        self._unlink(*object_name(block_hash), entry.size)
        return True

    def close(self) -> None:
        """Release the reader threads and the folder's descriptor; later calls fail as I/O errors
        (misses, or TierIOError on put)."""
        with self._lock:
            self._closed, readers = True, self._readers
        if readers is not None:
            readers.shutdown()
        self.folder.close()

    def _abort_put(self, size: int, fanout: str, name: str, exc: OSError) -> TierIOError:
        """Release a failed put's reservation, count it, and return the error to raise."""
        with self._lock:
            self._index.reserved_bytes -= size
            self.stats.io_errors += 1
        return io_error(f"disk tier write of {size} bytes to {self.root}/{fanout}/{name}", f"{self.root}/{fanout}",
                        exc, "; the block was not stored")

    def _reserve(self, size: int) -> None:
        self._free_space.refresh_if_stale()  # NOTE: outside the lock: statvfs is a syscall (an RPC on NFS)
        with self._lock:
            idx = self._index
            need = max(idx.used_bytes + size - self.capacity_bytes,
                       self.config.min_free_bytes + size + idx.reserved_bytes - self._free_space.estimate())
            victims = idx.take_victims(need) if need > 0 else []
            if victims is None:
                self.stats.rejected += 1
                raise self._full_error(size, need)
            idx.reserved_bytes += size
            self.stats.evictions += len(victims)
        for block_hash, victim_size in victims:
            self._hand_to_hook(block_hash)
            self._unlink(*object_name(block_hash), victim_size)

    def _full_error(self, size: int, need: int) -> TierFullError:
        idx = self._index
        return TierFullError(
            f"disk tier {self.root} is full: a {size}-byte block needs {need} bytes freed, but only "
            f"{idx.evictable_bytes()} of {idx.file_bytes} bytes in {len(idx)} objects are unpinned "
            f"(capacity_bytes={self.capacity_bytes}, min_free_bytes={self.config.min_free_bytes}, "
            f"{idx.quarantine_bytes} bytes quarantined, {self._free_space.refresh()} bytes free on the filesystem); "
            "unpin blocks, raise capacity_bytes, or free space on the filesystem")

    def _hand_to_hook(self, block_hash: BlockHash) -> None:
        hook = self._eviction_hook
        if hook is None:
            return
        fanout, name = object_name(block_hash)
        try:
            result = read_block(self._io, self.folder.fd, fanout, name, None, self.layout, direct=self.direct)
        except (OSError, DamagedObjectError) as exc:
            logger.warning("evicted block %s was unreadable; not handed on: %s", block_hash.hex(), exc)
            return
        hook(result.key, result.data)

    def _unlink(self, fanout: str, name: str, size: int) -> None:
        try:
            self.folder.unlink(fanout, name)
        except OSError as exc:
            logger.warning("could not remove object %s/%s/%s: %s", self.root, fanout, name, exc)
        self._free_space.removed(size)

    def _lookup(self, block_hash: BlockHash) -> tuple[bool, int | None]:
        """Whether this tier has the object (or, shared, can see it), and the header checksum it
        last wrote or verified under that hash (None: not known yet)."""
        with self._lock:
            entry = self._index.get(block_hash)
        if entry is None:
            return self._discover(block_hash), None
        return True, entry.header_checksum

    def _discover(self, block_hash: BlockHash) -> bool:
        """Shared folders: index an object another process wrote. Local folders: no filesystem look-up."""
        if not self.shared:
            return False
        st = self.folder.lstat(*object_name(block_hash))
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > self._max_object_bytes:  # no link, FIFO, giant
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

    def _on_damaged(self, block_hash: BlockHash, fanout: str, name: str, exc: DamagedObjectError) -> None:
        keep = self.shared and exc.keep
        logger.warning("disk tier object %s/%s/%s failed verification (%s); %s", self.root, fanout, name, exc,
                       "quarantined" if keep else "removed")
        with self._lock:
            self.stats.corrupt += 1
        self._forget(block_hash)
        if not keep:
            remove_damaged(self.folder, fanout, name, exc.inode)
            return
        quarantined = quarantine(self.folder, fanout, name, exc.inode)
        if quarantined is not None:
            with self._lock:
                self._index.quarantine_bytes = quarantined

    def _on_read_error(self, block_hash: BlockHash, fanout: str, name: str, exc: OSError) -> None:
        logger.warning("disk tier read of %s/%s/%s failed: %s", self.root, fanout, name, exc)
        with self._lock:
            self.stats.io_errors += 1
        if exc.errno in _NOT_HERE:  # never followed; a later put replaces a link at the name
            self._forget(block_hash)

    def _forget(self, block_hash: BlockHash) -> None:
        with self._lock:  # a pinned record stays until unpinned, even if another host removed the file
            if not self._index.is_pinned(block_hash):
                self._index.remove(block_hash)

    def _count_miss(self) -> torch.Tensor | None:
        with self._lock:
            self.stats.misses += 1
        return None

