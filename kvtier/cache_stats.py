"""CacheStats: where a tiered cache found the blocks it was asked for, and what it moved."""
from __future__ import annotations

from dataclasses import dataclass, field

from kvtier.types import TierKind


@dataclass(slots=True)
class CacheStats:
    """Blocks looked up and where they were found; blocks moved per tier."""

    lookup_blocks: int = 0  # full blocks of prompts that could have hit
    hit_blocks: dict[TierKind, int] = field(default_factory=lambda: {k: 0 for k in TierKind})
    offloaded_blocks: int = 0  # device -> first lower tier
    dropped_blocks: int = 0  # evicted from the device with no lower tier able to take them
    onloaded_bytes: int = 0
    offloaded_bytes: int = 0

    @property
    def miss_blocks(self) -> int:
        """Blocks that could have hit but were found in no tier (they are recomputed)."""
        return self.lookup_blocks - sum(self.hit_blocks.values())

    def hit_rate(self, kind: TierKind) -> float:
        return self.hit_blocks[kind] / self.lookup_blocks if self.lookup_blocks else 0.0
