"""Typed errors of kvtier: every message states what happened, the numbers, and a remedy."""
from __future__ import annotations


class KVTierError(Exception):
    """Base class of every error kvtier raises on purpose."""


class OutOfBlocksError(KVTierError):
    """The device pool has no free or evictable block left for a request."""


class TierFullError(KVTierError):
    """A tier is at its capacity and nothing in it may be evicted (back-pressure)."""


class TierIOError(KVTierError):
    """A lower tier failed to read or write; callers treat it as a miss."""


class TransferError(KVTierError):
    """A move between tiers failed or was cancelled."""


class FormatError(KVTierError):
    """Bytes that claim to be a block object are malformed, corrupt or foreign."""


class UnsupportedModelError(KVTierError):
    """A model or checkpoint the reference decoder cannot run (named, before any compute)."""


class LostBlocksError(KVTierError):
    """Blocks a cache needs are in no tier any more (dropped for want of room, or failed
    verification), and it cannot recompute them (it holds K/V it was handed, not tokens)."""
