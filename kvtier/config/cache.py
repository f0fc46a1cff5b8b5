"""KVTierConfig: the whole tiered cache (layout, device pool, tiers, transfer engine), the one way to build one."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from kvtier.config.checks import check_nonnegative_int, check_positive_int
from kvtier.config.model import KVLayout
from kvtier.config.tiers import (
    DeviceTierConfig,
    DiskTierConfig,
    FolderTierConfig,
    HostTierConfig,
    RemoteTierConfig,
    SharedTierConfig,
    TierConfig,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfig:
    """The transfer engine: I/O worker threads, how many bytes of spills may be in flight, and the
    host memory onloads land in that is allocated and touched when the cache opens (`landing_bytes`,
    0: none), so that the first restore after a start pays no page faults."""

    num_workers: int = 4
    max_inflight_write_bytes: int = 256 << 20
    landing_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        check_positive_int("TransferConfig", "num_workers", self.num_workers)
        check_positive_int("TransferConfig", "max_inflight_write_bytes", self.max_inflight_write_bytes)
        check_nonnegative_int("TransferConfig", "landing_bytes", self.landing_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class KVTierConfig:
    """Everything a tiered cache needs: the layout, the device pool, the tiers below it (fastest
    first: each one's evictions spill to the next), and the transfer engine."""

    layout: KVLayout
    device: DeviceTierConfig
    tiers: tuple[TierConfig, ...] = ()
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, KVLayout) or not isinstance(self.device, DeviceTierConfig):
            raise ValueError("KVTierConfig needs layout=KVLayout(...) and device=DeviceTierConfig(...), "
                             f"got {type(self.layout).__name__} and {type(self.device).__name__}")
        paths: list[str] = []
        for i, tier in enumerate(self.tiers):
            if not isinstance(tier, (HostTierConfig, DiskTierConfig, SharedTierConfig, RemoteTierConfig)):
                raise ValueError(f"KVTierConfig.tiers[{i}] must be a HostTierConfig, DiskTierConfig, "
                                 f"SharedTierConfig or RemoteTierConfig, got {type(tier).__name__}")
            if isinstance(tier, HostTierConfig) and i > 0:
                raise ValueError(f"KVTierConfig.tiers[{i}] is a host tier; a host tier can only be the first "
                                 "(fastest) tier below the device")
            if isinstance(tier, FolderTierConfig):
                if os.path.abspath(tier.path) in paths:
                    raise ValueError(f"KVTierConfig.tiers[{i}].path {tier.path!r} is used by an earlier tier")
                paths.append(os.path.abspath(tier.path))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVTierConfig:
        """Build from plain data (a parsed TOML or JSON file); see kvtier/config/parse.py."""
        from kvtier.config.parse import config_from_dict
        return config_from_dict(data)

    @classmethod
    def from_toml(cls, path: str) -> KVTierConfig:
        """Read a TOML file (the CLI's `--config FILE`); see kvtier/config/parse.py."""
        from kvtier.config.parse import config_from_toml
        return config_from_toml(path)
