"""The tier a TierConfig describes: the one place a config becomes a HostStore or a DiskStore."""
from __future__ import annotations

from kvtier.config import (
    DiskTierConfig,
    HostTierConfig,
    KVLayout,
    RemoteTierConfig,
    SharedTierConfig,
    TierConfig,
)
from kvtier.tiers.base import TierStore


def open_tier(layout: KVLayout, config: TierConfig) -> TierStore:
    """A new tier of `layout` for `config` (a disk or shared folder is warm-restarted from its files).

    Raises:
        TierIOError: a folder tier's path cannot be used (the message says why and what to do).
    """
    if isinstance(config, HostTierConfig):
        from kvtier.tiers.host import HostStore
        return HostStore(layout, config.num_blocks, pin_memory=config.pin_memory)
    if isinstance(config, (DiskTierConfig, SharedTierConfig)):
        from kvtier.tiers.disk import DiskStore
        return DiskStore(layout, config)
    if isinstance(config, RemoteTierConfig):
        from kvtier.tiers.remote import RemoteStore
        return RemoteStore(layout, config)
    raise ValueError(f"no tier is built from a {type(config).__name__}; pass a HostTierConfig, DiskTierConfig, "
                     "SharedTierConfig or RemoteTierConfig")
