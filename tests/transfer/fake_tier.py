"""FakeTier: the in-memory TierStore of the transfer tests, with a gate, a call log and injected faults."""
from __future__ import annotations

import hashlib
import threading
from collections import Counter

import torch

from kvtier.config import KVLayout
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.types import BlockHash, Namespace, TierKind

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=4, block_size=2, dtype=torch.float16)
NAMESPACE = Namespace(hashlib.sha256(b"transfer-tests").digest())


def make_key(i: int) -> BlockKey:
    return BlockKey(NAMESPACE, BlockHash(hashlib.sha256(NAMESPACE + i.to_bytes(8, "little")).digest()),
                    (2 * i, 2 * i + 1))


def make_block(i: int, layout: KVLayout = LAYOUT) -> torch.Tensor:
    return torch.full(layout.block_shape, float(i), dtype=layout.dtype)


class FakeTier(TierStore):
    """A dict of cloned blocks without capacity pressure.

    Every get and put waits for `gate`, then appends ("get"|"put", key index) to `calls` in the
    order they ran; keys in `get_faults`/`put_faults` raise the exception given there instead.
    """

    kind = TierKind.HOST

    def __init__(self, layout: KVLayout = LAYOUT) -> None:
        super().__init__(layout)
        self.blocks: dict[BlockHash, torch.Tensor] = {}
        self.pins: Counter[BlockHash] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, int]] = []
        self.get_faults: dict[BlockHash, Exception] = {}
        self.put_faults: dict[BlockHash, Exception] = {}
        self._lock = threading.Lock()

    capacity_bytes = property(lambda self: 1 << 40)
    used_bytes = property(lambda self: len(self.blocks) * self.layout.page_size_bytes)
    num_blocks = property(lambda self: len(self.blocks))

    @property
    def num_pinned(self) -> int:
        return sum(self.pins.values())

    def contains(self, block_hash: BlockHash) -> bool:
        return block_hash in self.blocks

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        self._enter("put", key, self.put_faults)
        self.check_block(data)
        with self._lock:
            self.blocks[key.block_hash] = data.clone()
            self.stats.puts += 1

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        self._enter("get", key, self.get_faults)
        data = self.blocks.get(key.block_hash)
        if data is None:
            return None
        return out.copy_(data) if out is not None else data.clone()

    def _enter(self, op: str, key: BlockKey, faults: dict[BlockHash, Exception]) -> None:
        self.gate.wait()
        with self._lock:
            self.calls.append((op, key.token_ids[0] // 2))
        if key.block_hash in faults:
            raise faults[key.block_hash]

    def pin(self, block_hash: BlockHash) -> None:
        if block_hash not in self.blocks:
            raise KeyError(block_hash.hex())
        with self._lock:
            self.pins[block_hash] += 1

    def unpin(self, block_hash: BlockHash) -> None:
        with self._lock:
            if self.pins[block_hash] <= 0:
                raise RuntimeError(f"unpin of block {block_hash.hex()[:16]}, which is not pinned")
            self.pins[block_hash] -= 1

    def evict(self, block_hash: BlockHash) -> bool:
        if self.pins[block_hash]:
            raise RuntimeError(f"evict of pinned block {block_hash.hex()[:16]}")
        return self.blocks.pop(block_hash, None) is not None
