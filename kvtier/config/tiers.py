"""One frozen config per tier: the device pool, host RAM, a local disk folder, a shared folder."""
from __future__ import annotations

from dataclasses import dataclass

from kvtier.config.checks import (
    check_bool,
    check_mode,
    check_nonnegative_int,
    check_positive_int,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceTierConfig:
    """The device pool: `num_blocks` blocks on `device` ("cpu", "cuda", "cuda:1", ...).

    `prefault` (CPU pools): touch every page when the pool opens, as a serving engine preallocates its
    KV cache, so a restore or a prefill never pays page faults; False makes pages when first written,
    for a pool sized far beyond what it will hold (TieredCache's whole-window default).
    """

    num_blocks: int
    device: str = "cpu"
    prefault: bool = True

    def __post_init__(self) -> None:
        check_positive_int("DeviceTierConfig", "num_blocks", self.num_blocks)
        check_bool("DeviceTierConfig", "prefault", self.prefault)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"DeviceTierConfig.device must be a device name such as 'cpu' or 'cuda:0', "
                             f"got {self.device!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostTierConfig:
    """A slab of `num_blocks` block slots in host RAM; pinned when CUDA is present (pin_memory None)."""

    num_blocks: int
    pin_memory: bool | None = None

    def __post_init__(self) -> None:
        check_positive_int("HostTierConfig", "num_blocks", self.num_blocks)
        if self.pin_memory is not None:
            check_bool("HostTierConfig", "pin_memory", self.pin_memory)


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderTierConfig:
    """What every folder tier has: where, how much, durability, codec and file modes.

    Modes are passed to open(2) and mkdir(2), so the process umask still applies (a group share
    wants e.g. file_mode=0o660, dir_mode=0o770 and a umask of 007).
    """

    path: str
    capacity_bytes: int
    min_free_bytes: int = 0  # floor of free space on the filesystem, read from statvfs
    fsync: bool = True
    codec: str = "raw"
    native_io: bool = True  # object I/O through the compiled routines where built (tiers/disk/fileio.py)
    file_mode: int = 0o600  # KV is user data: private by default
    dir_mode: int = 0o700

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"{owner}.path must be a non-empty folder path, got {self.path!r}")
        check_positive_int(owner, "capacity_bytes", self.capacity_bytes)
        check_nonnegative_int(owner, "min_free_bytes", self.min_free_bytes)
        for name in ("fsync", "native_io"):
            check_bool(owner, name, getattr(self, name))
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"{owner}.codec must be 'raw' or 'zstd', got {self.codec!r}")
        check_mode(owner, "file_mode", self.file_mode)
        check_mode(owner, "dir_mode", self.dir_mode)
        if self.dir_mode & 0o700 != 0o700:
            raise ValueError(f"{owner}.dir_mode must let the owner enter the folder (0o700 set), "
                             f"got {oct(self.dir_mode)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskTierConfig(FolderTierConfig):
    """A folder on a local disk (NVMe): this process is its only writer."""

    tmpfile: bool = True  # publish O_TMPFILE inodes with linkat where the filesystem can

    def __post_init__(self) -> None:
        FolderTierConfig.__post_init__(self)
        check_bool("DiskTierConfig", "tmpfile", self.tmpfile)


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedTierConfig(FolderTierConfig):
    """A folder shared by several hosts (an NFS mount): temporary names, quarantine, others' objects seen.

    `write_through`: every newly computed block is written here at once (so other hosts can hit
    it), not only when it is evicted from the tier above.
    """

    write_through: bool = True
    stale_temp_age_s: float = 3600.0  # a temporary file this old has lost its writer

    def __post_init__(self) -> None:
        FolderTierConfig.__post_init__(self)
        check_bool("SharedTierConfig", "write_through", self.write_through)
        if isinstance(self.stale_temp_age_s, bool) or not isinstance(self.stale_temp_age_s, (int, float)) \
                or not self.stale_temp_age_s > 0:
            raise ValueError(f"SharedTierConfig.stale_temp_age_s must be a number of seconds > 0, "
                             f"got {self.stale_temp_age_s!r}")


TierConfig = HostTierConfig | DiskTierConfig | SharedTierConfig
