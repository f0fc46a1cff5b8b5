"""The KV-offload I/O trace: one-block objects written once, prefix-read bursts with Zipf reuse.

A *prefix* is a chain of full blocks (one request's cached context). The write phase spills
prefixes block by block; the mixed phase replays requests that hit a cached prefix (a burst of
reads of its first blocks, prefixes chosen by a Zipf law) interleaved with spills of new ones.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kvtier.block.hashing import hash_block_tokens, namespace_digest
from kvtier.config import check_positive_int
from kvtier.tiers.base import BlockKey

OpKind = Literal["write", "read"]
VOCAB_SIZE = 128256  # Llama-3's; token ids only feed the hashes


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    """Shape of the trace. Prefix lengths are in blocks, drawn uniformly in [min, max]."""

    block_size: int = 16  # tokens
    min_prefix_blocks: int = 4
    max_prefix_blocks: int = 64
    zipf_s: float = 1.1
    read_ratio: float = 0.8  # share of the mixed phase's blocks that are reads
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("block_size", "min_prefix_blocks", "max_prefix_blocks"):
            check_positive_int("WorkloadConfig", name, getattr(self, name))
        if self.max_prefix_blocks < self.min_prefix_blocks:
            raise ValueError(f"WorkloadConfig.max_prefix_blocks ({self.max_prefix_blocks}) must be >= "
                             f"min_prefix_blocks ({self.min_prefix_blocks})")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError(f"WorkloadConfig.read_ratio must be in [0, 1], got {self.read_ratio}")
        if not self.zipf_s > 0:
            raise ValueError(f"WorkloadConfig.zipf_s must be > 0, got {self.zipf_s}")


@dataclass(frozen=True, slots=True)
class BlockOp:
    """One block moved: a write (spill) or a read (onload) of block `block_index` of a prefix."""

    kind: OpKind
    prefix_id: int
    block_index: int
    key: BlockKey
    data_index: int  # which tensor of the data pool a write stores


class PrefixChains:
    """Deterministic keys of every prefix's blocks: token ids from SHAKE-256, hashed as the cache hashes."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self.namespace = namespace_digest(f"kvtier-bench/{config.seed}")
        self._rng = np.random.default_rng(config.seed)
        self._lengths: list[int] = []
        self._chains: dict[int, list[BlockKey]] = {}

    def length(self, prefix_id: int) -> int:
        """Number of blocks of a prefix (drawn once, in prefix order)."""
        while len(self._lengths) <= prefix_id:
            low, high = self.config.min_prefix_blocks, self.config.max_prefix_blocks
            self._lengths.append(int(self._rng.integers(low, high + 1)))
        return self._lengths[prefix_id]

    def key(self, prefix_id: int, block_index: int) -> BlockKey:
        chain = self._chains.setdefault(prefix_id, [])
        while len(chain) <= block_index:
            parent = chain[-1].block_hash if chain else self.namespace
            seed = f"{self.config.seed}:{prefix_id}:{len(chain)}".encode()
            raw = hashlib.shake_256(seed).digest(4 * self.config.block_size)
            token_ids = tuple(int.from_bytes(raw[i:i + 4], "little") % VOCAB_SIZE
                              for i in range(0, len(raw), 4))
            chain.append(BlockKey(self.namespace, hash_block_tokens(parent, token_ids), token_ids))
        return chain[block_index]


def write_trace(chains: PrefixChains, num_data: int, first_prefix: int = 0) -> Iterator[BlockOp]:
    """Spill prefixes `first_prefix`, `first_prefix + 1`, ... block by block, forever."""
    prefix_id, count = first_prefix, 0
    while True:
        for index in range(chains.length(prefix_id)):
            yield BlockOp("write", prefix_id, index, chains.key(prefix_id, index), count % num_data)
            count += 1
        prefix_id += 1


def zipf_weights(num_items: int, s: float) -> np.ndarray:
    """Probabilities proportional to 1 / rank**s for ranks 1..num_items."""
    weights: np.ndarray = 1.0 / np.arange(1, num_items + 1, dtype=np.float64) ** s
    normalized: np.ndarray = weights / weights.sum()
    return normalized


def mixed_trace(chains: PrefixChains, written: dict[int, int], num_data: int, *, read_ratio: float | None = None,
                seed: int | None = None) -> Iterator[BlockOp]:
    """Reads of cached prefixes (`written`: prefix id -> blocks on the tier) mixed with new spills.

    Each request reads the first k blocks of a prefix picked by Zipf over a shuffled ranking,
    k uniform in [ceil(n/2), n]. Reads and writes interleave block by block so that the share
    of reads is `read_ratio` (default: the config's) exactly (deficit scheduling).
    """
    cfg = chains.config
    read_ratio = cfg.read_ratio if read_ratio is None else read_ratio
    rng = np.random.default_rng(cfg.seed + 1 if seed is None else seed)
    ranked = [p for p in sorted(written) if written[p] > 0]
    rng.shuffle(ranked)
    probs = zipf_weights(len(ranked), cfg.zipf_s) if ranked else None
    spill = write_trace(chains, num_data, first_prefix=max(written, default=-1) + 1)
    burst: list[BlockOp] = []
    num_reads = num_total = 0
    while True:
        want_read = probs is not None and num_reads < read_ratio * (num_total + 1)
        if want_read:
            if not burst:
                prefix_id = ranked[int(rng.choice(len(ranked), p=probs))]
                n = written[prefix_id]
                k = int(rng.integers(math.ceil(n / 2), n + 1))
                burst = [BlockOp("read", prefix_id, i, chains.key(prefix_id, i), 0) for i in range(k)]
                burst.reverse()
            num_reads += 1
            yield burst.pop()
        else:
            yield next(spill)
        num_total += 1


def read_trace(chains: PrefixChains, written: dict[int, int]) -> Iterator[BlockOp]:
    """The mixed trace's prefix-read bursts alone (read ratio 1), drawn with a seed of their own."""
    return mixed_trace(chains, written, 1, read_ratio=1.0, seed=chains.config.seed + 2)


class TraceCursor:
    """Hands ops to worker threads in trace order and records what was handed out.

    Stops at `deadline` (perf_counter seconds) once at least `min_ops` were handed out, and at
    the first write beyond `max_write_bytes` (that op is dropped). A replay has neither limit.
    """

    def __init__(self, trace: Iterator[BlockOp], *, block_bytes: int, deadline: float | None = None,
                 min_ops: int = 1, max_write_bytes: int | None = None) -> None:
        self._trace = trace
        self._lock = threading.Lock()
        self._block_bytes = block_bytes
        self._deadline = deadline
        self._min_ops = min_ops
        self._max_write_bytes = max_write_bytes
        self._write_bytes = 0
        self.issued: list[BlockOp] = []

    @classmethod
    def replay(cls, ops: list[BlockOp], block_bytes: int) -> TraceCursor:
        return cls(iter(ops), block_bytes=block_bytes)

    def _is_over(self) -> bool:
        if len(self.issued) < self._min_ops:
            return False
        return self._deadline is not None and time.perf_counter() >= self._deadline

    def next(self) -> BlockOp | None:
        """The next op, or None when the phase is over (a write over `max_write_bytes` ends it too)."""
        with self._lock:
            if self._is_over():
                return None
            op = next(self._trace, None)
            if op is None:
                return None
            if op.kind == "write":
                if self._max_write_bytes is not None and \
                        self._write_bytes + self._block_bytes > self._max_write_bytes:
                    self._deadline = self._min_ops = 0  # over budget: stop for good
                    return None
                self._write_bytes += self._block_bytes
            self.issued.append(op)
            return op


def written_blocks(ops: list[BlockOp]) -> dict[int, int]:
    """Prefix id -> length of the leading run of its blocks that `ops` wrote."""
    seen: dict[int, set[int]] = {}
    for op in ops:
        if op.kind == "write":
            seen.setdefault(op.prefix_id, set()).add(op.block_index)
    lead: dict[int, int] = {}
    for prefix_id, indices in seen.items():
        n = 0
        while n in indices:
            n += 1
        lead[prefix_id] = n
    return lead
