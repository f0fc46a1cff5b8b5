"""The scheduler-side half: which vLLM block is in which host slot or in the folder, and when it may load.

vLLM asserts that every load succeeds, so nothing is ever promised before it is verified: a block
found only in the folder is answered HIT_PENDING while an I/O thread reads and checksums it into a
free slot; vLLM asks again, and hears HIT once it is there, or MISS if the object was damaged or
unreadable (the damage is counted and vLLM recomputes the block). Stored blocks are written
through to the folder by the same threads, so a later engine on the folder finds them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from kvtier.block.hashing import namespace_digest
from kvtier.config import KVLayout
from kvtier.errors import TierFullError, TierIOError
from kvtier.integrations.vllm.options import VLLMTierOptions
from kvtier.integrations.vllm.slab import HostSlab
from kvtier.integrations.vllm.slots import SlotState, SlotTable
from kvtier.integrations.vllm.vllm_api import (
    LookupResult,
    OffloadingManager,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
    SlotSpec,
)
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.build import open_tier
from kvtier.types import BlockHash, Namespace

logger = logging.getLogger(__name__)

MAX_REMEMBERED_FAILURES = 65536


@dataclass(slots=True)
class ManagerStats:
    """What the plug-in did, for logs, the stats file and the benches (counts of blocks)."""

    host_hits: int = 0  # lookups answered HIT from a host slot
    folder_reads: int = 0  # blocks read and verified from the folder into a slot
    folder_misses: int = 0  # folder reads that found the object gone, damaged or unreadable
    stores: int = 0  # blocks vLLM copied into a slot
    folder_writes: int = 0
    folder_write_errors: int = 0  # full folder or I/O error: the block stays in host memory only
    evictions: int = 0  # slots reused for another block


def object_namespace(model_name: str, layout: KVLayout, salt: str | None) -> Namespace:
    """The namespace of every object this engine writes: model, KV layout and tenant salt."""
    fingerprint = f"vllm-offload|{model_name}|{json.dumps(layout.to_dict(), sort_keys=True)}"
    return namespace_digest(fingerprint, salt)


class KVTierManager(OffloadingManager):  # type: ignore[misc]  # vLLM is untyped
    """vLLM's OffloadingManager over a HostSlab of slots and an optional kvtier folder tier."""

    def __init__(self, slab: HostSlab, options: VLLMTierOptions, model_name: str) -> None:
        self.slab, self.options, self.model_name = slab, options, model_name
        self.stats = ManagerStats()
        self._table = SlotTable(slab.num_slots)
        self._lock = threading.Lock()
        self._io = ThreadPoolExecutor(options.io_threads, thread_name_prefix="kvtier-vllm-io")
        self._folder: TierStore | None = None
        self._namespace: Namespace | None = None
        self._held: list[bytes] = []  # HIT answered this step, pinned until vLLM prepares the load
        self._failed: set[bytes] = set()  # folder reads that failed: MISS until stored again
        self._filling = 0
        self._stats_written: dict[str, int] | None = None
        self._stats_lock = threading.Lock()
        self._closed = False
        self._start()

    # -- set-up ---------------------------------------------------------------------------------

    def _start(self) -> bool:
        """Open the folder once the worker has published the KV layout (it does so before vLLM
        builds the scheduler); False while it has not."""
        if self._namespace is not None:
            return True
        layout = self.slab.read_layout()
        if layout is None:
            return False
        self.slab.unlink()  # both processes have it mapped now
        self._namespace = object_namespace(self.options.model_id or self.model_name, layout, self.options.salt)
        if self.options.tier is not None:
            self._folder = open_tier(layout, self.options.tier)
            logger.info("kvtier: %d host slots of %d bytes, folder %s holding %d blocks", self.slab.num_slots,
                        layout.page_size_bytes, self.options.tier.path, self._folder.num_blocks)
        return True

    def _ready(self) -> None:
        if not self._start():
            raise RuntimeError(f"kvtier: the vLLM worker has not published its KV layout in {self.slab.path}; "
                               f"the scheduler asked before the worker registered its KV caches (a vLLM change?)")

    def _object_key(self, key: bytes) -> BlockKey:
        assert self._namespace is not None
        digest = hashlib.sha256(self._namespace + bytes(key)).digest()
        return BlockKey(self._namespace, BlockHash(digest), ())

    def _in_folder(self, key: bytes) -> bool:
        assert self._folder is not None
        return self._folder.contains(self._object_key(key).block_hash)

    # -- lookups and loads ----------------------------------------------------------------------

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        with self._lock:
            self._ready()
            answer = self._answer(key)
            if answer is not None or self._folder is None or key in self._failed:
                return answer or LookupResult.MISS
        if not self._in_folder(key):
            return LookupResult.MISS
        with self._lock:
            answer = self._answer(key)  # another lookup may have started it meanwhile
            if answer is not None:
                return answer
            claimed, evicted = self._table.claim([key], SlotState.FILLING)
            self.stats.evictions += len(evicted)
            if not claimed:
                return LookupResult.MISS  # every slot pinned: recompute rather than wait
            self._filling += 1
        self._io.submit(self._fill, key, claimed[0].index)
        return LookupResult.HIT_PENDING

    def _answer(self, key: bytes) -> LookupResult | None:
        slot = self._table.get(key)
        if slot is None:
            return None
        if slot.state is SlotState.READY:
            self._table.touch(key)
            self._table.pin(key)
            self._held.append(key)
            self.stats.host_hits += 1
            return LookupResult.HIT
        return LookupResult.HIT_PENDING if slot.state is SlotState.FILLING else LookupResult.MISS

    def _fill(self, key: bytes, index: int) -> None:
        """I/O thread: read and verify one object into its slot (a miss of any kind frees the slot)."""
        assert self._folder is not None
        try:
            got = self._folder.get(self._object_key(key), out=self.slab.slot(index))
        except Exception:  # NOTE: an I/O thread must never die silently: a failed fill is a miss
            logger.exception("kvtier: reading a block from the folder failed; vLLM recomputes it")
            got = None
        with self._lock:
            self._filling -= 1
            if got is None:
                self._table.release(key)
                self.stats.folder_misses += 1
                if len(self._failed) >= MAX_REMEMBERED_FAILURES:
                    self._failed.clear()
                self._failed.add(key)
            else:
                self._table.set_state(key, SlotState.READY)
                self.stats.folder_reads += 1
        self._write_stats_file()

    def prepare_load(self, keys: Any, req_context: ReqContext) -> SlotSpec:
        with self._lock:
            return SlotSpec([self._table.pin(key).index for key in keys])

    def touch(self, keys: Any, req_context: ReqContext) -> None:
        with self._lock:
            for key in keys:
                self._table.touch(key)

    def complete_load(self, keys: Any, req_context: ReqContext) -> None:
        with self._lock:
            for key in keys:
                self._table.unpin(key)

    # -- stores ---------------------------------------------------------------------------------

    def prepare_store(self, keys: Any, req_context: ReqContext) -> PrepareStoreOutput | None:
        """Slots for the keys not held yet (LRU slots reused); None when every slot is pinned."""
        with self._lock:
            self._ready()
            new = [key for key in dict.fromkeys(keys) if key not in self._table]
            claimed, evicted = self._table.claim(new, SlotState.STORING)
            self.stats.evictions += len(evicted)
            if new and not claimed:
                return None
            stored = new[:len(claimed)]
            self._failed.difference_update(stored)
        return PrepareStoreOutput(keys_to_store=stored, store_spec=SlotSpec([slot.index for slot in claimed]),
                                  evicted_keys=[OffloadKey(key) for key in evicted])

    def complete_store(self, keys: Any, req_context: ReqContext, success: bool = True) -> None:
        writes = []
        with self._lock:
            for key in keys:
                slot = self._table.get(key)
                if slot is None or slot.state is not SlotState.STORING:
                    continue
                if not success:
                    self._table.release(key)
                    continue
                self._table.set_state(key, SlotState.READY)
                self.stats.stores += 1
                if self._folder is not None:
                    self._table.pin(key)  # until written: the slot is the write's source
                    writes.append((key, slot.index))
        for key, index in writes:
            self._io.submit(self._write, key, index)

    def _write(self, key: bytes, index: int) -> None:
        assert self._folder is not None
        try:
            self._folder.put(self._object_key(key), self.slab.slot(index))
            ok = True
        except (TierFullError, TierIOError) as exc:
            logger.warning("kvtier: block not written to the folder (%s); it stays in host memory", exc)
            ok = False
        except Exception:
            logger.exception("kvtier: writing a block to the folder failed; it stays in host memory")
            ok = False
        with self._lock:
            self._table.unpin(key)
            if ok:
                self.stats.folder_writes += 1
            else:
                self.stats.folder_write_errors += 1
        self._write_stats_file()

    # -- engine hooks ---------------------------------------------------------------------------

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        with self._lock:
            held, self._held = self._held, []
            for key in held:
                self._table.unpin(key)
        self._write_stats_file()

    def has_pending_work(self) -> bool:
        with self._lock:
            return self._filling > 0

    def reset_cache(self) -> None:
        """Forget the host slots not in use; the folder is kept (it is the persistent tier:
        `kvtier cache gc` trims it)."""
        with self._lock:
            self._table.clear_unpinned()

    def counters(self) -> dict[str, int]:
        """The plug-in's counts, and the folder tier's own (`folder_corrupt`: objects that failed verification)."""
        with self._lock:
            counters = asdict(self.stats)
        if self._folder is not None:
            counters.update({f"folder_{name}": value for name, value in self._folder.stats.as_dict().items()})
        return counters

    def _write_stats_file(self) -> None:
        """Counters as JSON at `stats_file` (when set), rewritten when they change."""
        path = self.options.stats_file
        if path is None:
            return
        with self._stats_lock:  # the scheduler thread and the I/O threads all write it
            counters = self.counters()
            if counters == self._stats_written:
                return
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump({**counters, "time": time.time()}, f)
                os.replace(tmp, path)
            except OSError as exc:
                logger.warning("kvtier: cannot write the stats file %s: %s", path, exc)
            self._stats_written = counters

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io.shutdown(wait=True)  # finish the writes already handed over
        self._write_stats_file()
        if self._folder is not None:
            self._folder.close()
        self.slab.unlink()
        logger.info("kvtier: %s", self.counters())
