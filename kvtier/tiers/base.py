"""TierStore: the interface every tier below the device pool implements (host, disk, NFS, Redis)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from kvtier.config import KVLayout
from kvtier.types import BlockHash, Namespace, TierKind


class BlockKey(NamedTuple):
    """What identifies a block object: its namespace, its chained hash, and its own token ids.

    Stores index by `block_hash` alone (it already chains the namespace); the namespace and
    token ids are written beside the payload where a tier can, and checked again on read.
    """

    namespace: Namespace
    block_hash: BlockHash
    token_ids: tuple[int, ...]


EvictionHook = Callable[[BlockKey, torch.Tensor], None]
"""Called with a block leaving a tier (and its data, valid only during the call)."""


@dataclass(slots=True)
class TierStats:
    """Counters of one tier; monotonic except `used_bytes`-like views computed elsewhere."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    evictions: int = 0
    rejected: int = 0  # puts refused with TierFullError (back-pressure)
    corrupt: int = 0  # objects that failed verification and were dropped
    io_errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TierStore(ABC):
    """A tier of whole blocks, each of `layout.block_shape`, keyed by block hash.

    A missing, corrupt or unreadable block is a miss (`get` returns None), never an exception
    and never wrong data. A full tier evicts its least recently used unpinned block, handing
    it to the eviction hook; when everything is pinned, `put` raises TierFullError.
    """

    kind: TierKind
    puts_inline = False
    """True where a put is a memory copy the caller's thread can do (host RAM); else puts of
    evicted blocks go through the transfer engine's workers."""

    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.stats = TierStats()
        self._eviction_hook: EvictionHook | None = None

    def set_eviction_hook(self, hook: EvictionHook | None) -> None:
        """Receive every block this tier evicts (the next tier down, usually)."""
        self._eviction_hook = hook

    @property
    @abstractmethod
    def capacity_bytes(self) -> int: ...

    @property
    @abstractmethod
    def used_bytes(self) -> int: ...

    @property
    @abstractmethod
    def num_blocks(self) -> int: ...

    @abstractmethod
    def contains(self, block_hash: BlockHash) -> bool: ...

    @abstractmethod
    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        """Store one block (a CPU or device tensor of `layout.block_shape` and `layout.dtype`).

        Raises:
            ValueError: data has the wrong shape or dtype.
            TierFullError: the tier is full and every resident block is pinned.
        """

    @abstractmethod
    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The block's data (into `out` when given), or None on a miss."""

    def get_many(self, keys: Sequence[BlockKey],
                 outs: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor | None]:
        """`get` of each key (into `outs[i]` when given), in order; a tier that can read a batch at
        once (the disk tier) does so."""
        return [self.get(key, out) for key, out in zip(keys, self._outputs(keys, outs))]

    @staticmethod
    def _outputs(keys: Sequence[BlockKey], outs: Sequence[torch.Tensor | None] | None) -> list[torch.Tensor | None]:
        """`get_many`'s output buffers, one per key (None: none given)."""
        targets: list[torch.Tensor | None] = list(outs) if outs is not None else [None] * len(keys)
        if len(targets) != len(keys):
            raise ValueError(f"get_many got {len(keys)} keys and {len(targets)} output tensors")
        return targets

    @abstractmethod
    def pin(self, block_hash: BlockHash) -> None:
        """Protect a resident block from eviction until `unpin`; pins nest.

        Raises:
            KeyError: the block is not in this tier (it may have just been evicted).
        """

    def pin_if_held(self, block_hash: BlockHash) -> bool:
        """Pin the block if this tier holds it; whether it did (`contains` then `pin`, which a tier may
        do under one lock: a prefix look-up asks this of every block)."""
        if not self.contains(block_hash):
            return False
        try:
            self.pin(block_hash)
        except KeyError:  # evicted between contains and pin
            return False
        return True

    def plan_reads(self, keys: Sequence[BlockKey]) -> object | None:
        """A plan to read `keys` again and again with `read_planned`, its per-block work done once
        (the disk tier: objects whose headers it verified); None: this tier cannot plan them."""
        return None

    def read_planned(self, plan: object, outs: torch.Tensor) -> bool:
        """Read a `plan_reads` plan into `outs[i]` (`[n, *block_shape]`, CPU), every block verified;
        False if not all were (`outs` undefined: read them with `get_many`, which says why).

        Raises:
            ValueError: `outs` is not `[n, *block_shape]` of the layout's dtype (a tier that plans).
        """
        return False

    def pin_known(self, block_hashes: Sequence[BlockHash]) -> list[bool]:
        """Pin each block this tier knows it holds without any I/O (its own index, under one lock);
        whether it did, per block. False only says "not known": a prefix look-up asks `pin_if_held`
        of such a block, which may look further (a shared folder's object another host wrote).
        This default knows nothing."""
        return [False] * len(block_hashes)

    @abstractmethod
    def unpin(self, block_hash: BlockHash) -> None:
        """Release one pin; RuntimeError when the block is not pinned (a caller bug)."""

    def unpin_many(self, block_hashes: Iterable[BlockHash]) -> None:
        """`unpin` of each block (a tier may take its lock once for them all)."""
        for block_hash in block_hashes:
            self.unpin(block_hash)

    @abstractmethod
    def evict(self, block_hash: BlockHash) -> bool:
        """Drop one block now (not handed to the hook); False if absent. Pinned blocks raise."""

    def close(self) -> None:
        """Release files, sockets and executors. Idempotent."""

    def check_block(self, data: torch.Tensor, op: str = "put") -> None:
        """Raise TypeError unless `data` is a tensor, ValueError unless it is one block of this layout.

        `op` names the call in the message ("put" for a block stored, "get" for an output buffer).
        """
        what = "a block" if op == "put" else "an output block"
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.{op} expects a torch.Tensor, got {type(data).__name__}")
        shape = self.layout.block_shape
        if data.shape != shape or data.dtype != self.layout.dtype:  # NOTE: a torch.Size is a tuple
            raise ValueError(f"{type(self).__name__}.{op} expects {what} of shape {list(shape)} "
                             f"and dtype {self.layout.dtype}, got {list(data.shape)} {data.dtype}")

    def __enter__(self) -> TierStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
