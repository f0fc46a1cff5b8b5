"""One frozen config per tier: the device pool, host RAM, a local disk folder, a shared folder, a Redis server."""
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
    direct_io: bool = False  # O_DIRECT reads and writes, page-aligned headers, where the folder takes them (tiers/disk/direct.py)
    read_threads: int = 4  # a batch read (get_many) reads this many runs of its objects at once
    file_mode: int = 0o600  # KV is user data: private by default
    dir_mode: int = 0o700

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"{owner}.path must be a non-empty folder path, got {self.path!r}")
        check_positive_int(owner, "capacity_bytes", self.capacity_bytes)
        check_nonnegative_int(owner, "min_free_bytes", self.min_free_bytes)
        check_positive_int(owner, "read_threads", self.read_threads)
        for name in ("fsync", "native_io", "direct_io"):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteTierConfig:
    """A Redis or Valkey server (or cluster) that several engines share: the same verified objects as a folder.

    url: redis://[user[:password]@]host:port[/db], rediss:// (TLS) or unix:///path.sock; a password in
        the URL, or in the environment variable `password_env` names (kept out of configs and logs).
    capacity_bytes: what this process may keep there (it evicts its own least recently used objects
        past it); the server's own maxmemory bounds everything.
    ttl_s: objects expire on the server after this many seconds (None: never).
    timeout_s: socket timeout of one command; retries: attempts after the first, with exponential
        backoff from backoff_s; after breaker_failures failed calls in a row the tier stops asking
        (every call a miss) for breaker_reset_s, then lets one call through to see if it is back.
    write_through: every newly computed block is written at once, so other engines can hit it (as a
        shared folder's); else only blocks evicted from the tiers above.
    cluster: a Redis Cluster (redis-py's cluster client; keys are spread by block hash).
    shard: set per rank under tensor/pipeline parallelism (kvtier/parallel/rank_cache.py): a rank's
        objects hold its layers and heads only, so their keys carry a digest of that shard.
    tls_ca_file: a PEM bundle of the CAs that sign a rediss:// server's certificate (a private CA's);
        None: the system's. The server's name or IP must be in its certificate either way.
    native_io: a standalone server's GET and SET through the compiled calls where built
        (tiers/remote/wire.py), else their Python twin; a cluster and TLS go through redis-py.
    """

    url: str
    capacity_bytes: int
    ttl_s: float | None = None
    timeout_s: float = 0.5
    retries: int = 2
    backoff_s: float = 0.02
    breaker_failures: int = 3
    breaker_reset_s: float = 2.0
    password_env: str | None = None
    max_connections: int = 16
    write_through: bool = True
    cluster: bool = False
    codec: str = "raw"
    shard: str | None = None
    tls_ca_file: str | None = None
    native_io: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"RemoteTierConfig.url must start with redis://, rediss:// or unix://, got {self.url!r}")
        check_positive_int("RemoteTierConfig", "capacity_bytes", self.capacity_bytes)
        check_nonnegative_int("RemoteTierConfig", "retries", self.retries)
        check_positive_int("RemoteTierConfig", "breaker_failures", self.breaker_failures)
        check_positive_int("RemoteTierConfig", "max_connections", self.max_connections)
        check_bool("RemoteTierConfig", "cluster", self.cluster)
        check_bool("RemoteTierConfig", "write_through", self.write_through)
        check_bool("RemoteTierConfig", "native_io", self.native_io)
        for name in ("timeout_s", "backoff_s", "breaker_reset_s") + (("ttl_s",) if self.ttl_s is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RemoteTierConfig.{name} must be a number of seconds > 0, got {value!r}")
        if self.password_env is not None and (not isinstance(self.password_env, str) or not self.password_env):
            raise ValueError(f"RemoteTierConfig.password_env must name an environment variable, "
                             f"got {self.password_env!r}")
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"RemoteTierConfig.codec must be 'raw' or 'zstd', got {self.codec!r}")
        if self.shard is not None and (not isinstance(self.shard, str) or not self.shard):
            raise ValueError(f"RemoteTierConfig.shard must be a non-empty string, got {self.shard!r}")
        if self.tls_ca_file is not None and (not isinstance(self.tls_ca_file, str) or not self.tls_ca_file
                                             or not self.url.startswith("rediss://")):
            raise ValueError(f"RemoteTierConfig.tls_ca_file must be a file path, with a rediss:// url; got "
                             f"{self.tls_ca_file!r} for {self.url.split('@')[-1]!r}")


TierConfig = HostTierConfig | DiskTierConfig | SharedTierConfig | RemoteTierConfig
