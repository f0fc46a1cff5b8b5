"""`kvtier bench storage`: the KV-offload pattern through a tier's public API against the raw ceiling.

Phases, each tier-then-raw on the same ops, same bytes, same thread count, same folder, with the
page cache flushed and dropped for both folders in between (raw_io.settle):
1. write: spill prefixes block by block (time-boxed for the tier, replayed exactly for raw);
2. mixed: prefix-read bursts with Zipf reuse, interleaved with new spills at `read_ratio`.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvtier.bench.raw_io import RawFiles, settle
from kvtier.bench.report import break_even, device_facts, direction, ratio
from kvtier.bench.runner import PhaseResult, run_phase
from kvtier.bench.tier_ops import TierOps, check_round_trip, data_pool
from kvtier.bench.workload import (BlockOp, PrefixChains, TraceCursor, WorkloadConfig, mixed_trace,
                                   write_trace, written_blocks)
from kvtier.config import DiskTierConfig, KVLayout, check_positive_int, dtype_name

TierFactory = Callable[[KVLayout, DiskTierConfig], Any]  # returns a TierStore
MAX_DEFAULT_BYTES = 16 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageBenchConfig:
    """One run of the storage bench. `max_bytes` caps what the tier writes (the raw ceiling as much)."""

    path: Path
    layout: KVLayout
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    concurrency: int = 4
    codec: str = "raw"
    fsync: bool = True
    duration_s: float = 10.0
    keep: bool = False
    max_bytes: int | None = None  # None: min(16 GiB, a quarter of the free space)
    progress: bool = False

    def __post_init__(self) -> None:
        check_positive_int("StorageBenchConfig", "concurrency", self.concurrency)
        if not self.duration_s > 0:
            raise ValueError(f"StorageBenchConfig.duration_s must be > 0 seconds, got {self.duration_s}")
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"StorageBenchConfig.codec must be 'raw' or 'zstd', got {self.codec!r}")
        if self.max_bytes is not None:
            check_positive_int("StorageBenchConfig", "max_bytes", self.max_bytes)
        if self.workload.block_size != self.layout.block_size:
            raise ValueError(f"StorageBenchConfig: workload.block_size ({self.workload.block_size}) must "
                             f"equal layout.block_size ({self.layout.block_size})")


def layout_for_block_bytes(block_bytes: int, block_size: int = 16) -> KVLayout:
    """A one-layer fp16 layout whose `page_size_bytes` is exactly `block_bytes`.

    K and V of `block_size` tokens at 2 bytes each need `block_bytes` to be a multiple of
    4 * block_size; the rest is split into KV heads of the largest usual head_dim that divides it.
    """
    check_positive_int("--block-bytes", "value", block_bytes)
    check_positive_int("--block-size", "value", block_size)
    unit = 2 * block_size * torch.float16.itemsize  # K and V, fp16
    if block_bytes % unit:
        raise ValueError(f"--block-bytes {block_bytes} is not a multiple of {unit} (2 (K,V) x {block_size} "
                         f"tokens x 2 bytes fp16); try {max(unit, block_bytes // unit * unit)}")
    width = block_bytes // unit  # num_kv_heads * head_dim
    head_dim = next(d for d in (128, 64, 256, 32, 16, 8, 4, 2, 1) if width % d == 0)
    return KVLayout(num_layers=1, num_kv_heads=width // head_dim, head_dim=head_dim,
                    block_size=block_size, dtype=torch.float16)


def default_tier_factory(layout: KVLayout, config: DiskTierConfig) -> Any:
    from kvtier.tiers.disk import DiskStore  # imported late: the bench must load without it

    return DiskStore(layout, config)


def _budget(config: StorageBenchConfig) -> int:
    free = shutil.disk_usage(config.path).free
    budget = config.max_bytes or min(MAX_DEFAULT_BYTES, free // 4)
    block_bytes = config.layout.page_size_bytes
    if 2 * budget > free or budget < 2 * block_bytes:
        raise ValueError(f"bench needs 2 x {budget} bytes (tier + raw ceiling) with at least two blocks of "
                         f"{block_bytes} bytes each; {config.path} has {free} free; free space or lower --max-bytes")
    return budget


@dataclass(slots=True)
class _Run:
    config: StorageBenchConfig
    tier: TierOps
    raw: RawFiles
    budget: int
    phases: dict[str, PhaseResult] = field(default_factory=dict)

    def pair(self, name: str, cursor: TraceCursor) -> list[BlockOp]:
        """The tier on `cursor`, then the raw ceiling on exactly the ops the tier was given."""
        self.phases[f"tier_{name}"] = self._timed(f"tier {name}", self.tier.run, cursor, self.tier.folder)
        replay = TraceCursor.replay(cursor.issued, self.config.layout.page_size_bytes)
        self.phases[f"raw_{name}"] = self._timed(f"raw {name}", self.raw.run, replay, self.raw.folder)
        return cursor.issued

    def _timed(self, label: str, op_fn: Callable[[BlockOp], bool], cursor: TraceCursor,
               folder: Path) -> PhaseResult:
        from tqdm import tqdm

        cfg = self.config
        with tqdm(desc=label, unit="B", unit_scale=True, disable=not cfg.progress, leave=False) as bar:
            result = run_phase(label, op_fn, cursor, concurrency=cfg.concurrency,
                               block_bytes=cfg.layout.page_size_bytes, progress=bar)
        settle(folder)
        return result

    def cursor(self, trace: Any, max_write_bytes: int) -> TraceCursor:
        cfg = self.config
        return TraceCursor(trace, block_bytes=cfg.layout.page_size_bytes,
                           deadline=time.perf_counter() + cfg.duration_s / 2,
                           min_ops=max(2 * cfg.concurrency, 4), max_write_bytes=max_write_bytes)


def run_storage_bench(config: StorageBenchConfig, tier_factory: TierFactory | None = None) -> dict[str, Any]:
    """Run both phases and return the report (see report.py for the keys)."""
    if not config.path.is_dir():
        raise ValueError(f"--path {config.path} is not an existing folder")
    budget = _budget(config)
    run_id = f"kvtier-bench-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    tier_dir, raw_dir = config.path / run_id, config.path / f"{run_id}.raw"
    pool = data_pool(config.layout, config.workload.seed)
    disk_config = DiskTierConfig(path=str(tier_dir), capacity_bytes=2 * budget, fsync=config.fsync,
                                 codec=config.codec)
    tier_dir.mkdir()
    store = None
    try:
        store = (tier_factory or default_tier_factory)(config.layout, disk_config)
        check_round_trip(store, config.layout, pool)
        run = _Run(config, TierOps(store, tier_dir, pool), RawFiles(raw_dir, pool, fsync=config.fsync), budget)
        chains = PrefixChains(config.workload)
        written = run.pair("write", run.cursor(write_trace(chains, len(pool)), budget // 2))
        spare = budget - len(written) * config.layout.page_size_bytes
        run.pair("mixed", run.cursor(mixed_trace(chains, written_blocks(written), len(pool)), spare))
        stats = dict(store.stats.as_dict()) if hasattr(store, "stats") else {}
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(raw_dir, ignore_errors=True)
        if not config.keep:
            shutil.rmtree(tier_dir, ignore_errors=True)
    return build_report(config, run.phases, tier_dir, stats)


def build_report(config: StorageBenchConfig, phases: dict[str, PhaseResult], tier_dir: Path,
                 tier_stats: dict[str, Any]) -> dict[str, Any]:
    layout = config.layout
    report: dict[str, Any] = {}
    report |= direction("write_", phases["tier_write"], "write")
    report |= direction("raw_write_", phases["raw_write"], "write")
    report |= direction("read_", phases["tier_mixed"], "read")
    report |= direction("raw_read_", phases["raw_mixed"], "read")
    report |= {k: v for k, v in direction("mixed_write_", phases["tier_mixed"], "write").items()
               if k.endswith(("gbps", "ops"))}
    report |= {k: v for k, v in direction("raw_mixed_write_", phases["raw_mixed"], "write").items()
               if k.endswith(("gbps", "ops"))}
    report["write_ratio"] = ratio(report["write_gbps"], report["raw_write_gbps"])
    report["read_ratio"] = ratio(report["read_gbps"], report["raw_read_gbps"])
    report["misses"] = sum(p.misses for name, p in phases.items() if name.startswith("tier"))
    report["rejected"] = sum(p.rejected for name, p in phases.items() if name.startswith("tier"))
    report["phase_wall_s"] = {name: p.wall_s for name, p in phases.items()}
    report |= break_even(layout.bytes_per_token, report["read_gbps"])
    report["raw_prefix_load_ms"] = break_even(layout.bytes_per_token, report["raw_read_gbps"])["prefix_load_ms"]
    report["tier_stats"] = tier_stats
    report["tier_path"] = str(tier_dir) if config.keep else None
    report["page_cache"] = "flushed and dropped (fdatasync + POSIX_FADV_DONTNEED) after every phase"
    report["config"] = {
        "path": str(config.path), "block_bytes": layout.page_size_bytes, "block_size": layout.block_size,
        "layout": {**layout.to_dict(), "dtype": dtype_name(layout.dtype)}, "concurrency": config.concurrency,
        "codec": config.codec, "fsync": config.fsync, "duration_s": config.duration_s,
        "read_ratio": config.workload.read_ratio, "keep": config.keep, "workload": asdict(config.workload),
        "api": "sync TierStore (put/get) on threads"}
    report["device"] = device_facts(config.path)
    return report
