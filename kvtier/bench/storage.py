"""`kvtier bench storage`: the KV-offload pattern through a tier's public API against the raw ceiling.

Two phases, each cut into rounds; in a round one side (tier or raw, alternating) runs time-boxed
and the other replays exactly its ops: same bytes, same thread count, the same fan-out folders
(raw files sit beside the tier's objects), and the page cache flushed and dropped for the files a
slice touched after every slice (page_cache.drop_cached). Many short rounds rather than a few long
ones: a disk's speed drifts over seconds, and only sides measured close together see the same disk.
1. write: spill prefixes block by block;
2. mixed: prefix-read bursts with Zipf reuse, interleaved with new spills at `read_ratio`.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvtier.bench.page_cache import drop_cached, settle
from kvtier.bench.raw_tier import RAW_SUFFIX, RawFileTier
from kvtier.bench.report import build_report
from kvtier.bench.round_stats import WARMUP_ROUNDS
from kvtier.bench.runner import AsyncOpFn, PhaseResult, run_phase, run_phase_async
from kvtier.bench.tier_ops import (
    AsyncTierOps,
    TierOps,
    check_round_trip,
    data_pool,
)
from kvtier.bench.workload import (
    BlockOp,
    PrefixChains,
    TraceCursor,
    WorkloadConfig,
    mixed_trace,
    write_trace,
    written_blocks,
)
from kvtier.config import DiskTierConfig, KVLayout, check_positive_int
from kvtier.transfer.aio import AsyncTier

TierFactory = Callable[[KVLayout, DiskTierConfig], Any]  # returns a TierStore
AsyncFactory = Callable[[Any, int], AsyncTier]  # (TierStore, concurrency) -> its asyncio API
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
    duration_s: float = 10.0  # of the leading sides' I/O, half writes, half mixed; replays add as much
    rounds: int = 16  # slices per phase, alternating which side leads
    keep: bool = False
    max_bytes: int | None = None  # None: min(16 GiB, a quarter of the free space)
    progress: bool = False
    api: str = "sync"  # "sync": TierStore put/get on threads; "async": the asyncio API on one loop
    calibrate: bool = False  # raw files in the tier's place too (an A/A run): the ratios' noise floor

    def __post_init__(self) -> None:
        check_positive_int("StorageBenchConfig", "concurrency", self.concurrency)
        check_positive_int("StorageBenchConfig", "rounds", self.rounds)
        if not self.duration_s > 0:
            raise ValueError(f"StorageBenchConfig.duration_s must be > 0 seconds, got {self.duration_s}")
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"StorageBenchConfig.codec must be 'raw' or 'zstd', got {self.codec!r}")
        if self.api not in ("sync", "async"):
            raise ValueError(f"StorageBenchConfig.api must be 'sync' or 'async', got {self.api!r}")
        if self.max_bytes is not None:
            check_positive_int("StorageBenchConfig", "max_bytes", self.max_bytes)
        if self.calibrate and (self.api, self.codec) != ("sync", "raw"):
            raise ValueError("StorageBenchConfig.calibrate runs plain files against plain files; "
                             f"api {self.api!r} and codec {self.codec!r} do not apply (use sync and raw)")
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
    # NOTE: imported here so that the bench (and its tests with a fake tier) load without it.
    from kvtier.tiers.disk import DiskStore

    return DiskStore(layout, config)


def default_async_factory(store: Any, concurrency: int) -> AsyncTier:
    """The asyncio layer over the store: its own transfer engine with `concurrency` workers."""
    return AsyncTier(store, max_concurrency=concurrency)


def _object_path_fn(store: Any) -> Callable[[BlockOp], str] | None:
    """The file of an op's block when the tier names it (DiskStore.path_of); None for other tiers."""
    path_of = getattr(store, "path_of", None)
    if path_of is None:
        return None
    return lambda op: str(path_of(op.key.block_hash))


def _budget(config: StorageBenchConfig) -> int:
    free = shutil.disk_usage(config.path).free
    budget = config.max_bytes or min(MAX_DEFAULT_BYTES, free // 4)
    block_bytes = config.layout.page_size_bytes
    if 2 * budget > free or budget < 2 * block_bytes:
        raise ValueError(f"bench needs 2 x {budget} bytes (tier + raw ceiling) with at least two blocks of "
                         f"{block_bytes} bytes each; {config.path} has {free} free; free some space or pass a lower --max-bytes")
    return budget


@dataclass(frozen=True, slots=True)
class _Side:
    """One contender: its label, how it runs a slice of ops, and the folder it leaves files in."""

    label: str
    folder: Path
    op_fn: Callable[[BlockOp], bool] | None = None
    async_op_fn: AsyncOpFn | None = None
    path_of: Callable[[BlockOp], str] | None = None  # the file an op touches; None: settle the whole folder

    def settle(self, ops: list[BlockOp]) -> None:
        if self.path_of is None:
            settle(self.folder)
        else:
            drop_cached(dict.fromkeys(map(self.path_of, ops)))

    def run(self, name: str, cursor: TraceCursor, config: StorageBenchConfig, bar: Any) -> PhaseResult:
        kwargs: dict[str, Any] = {"concurrency": config.concurrency, "block_bytes": config.layout.page_size_bytes,
                                  "progress": bar}
        if self.async_op_fn is not None:
            return run_phase_async(f"{self.label} {name}", self.async_op_fn, cursor, **kwargs)
        assert self.op_fn is not None, "a side needs a sync or an async op"
        return run_phase(f"{self.label} {name}", self.op_fn, cursor, **kwargs)


@dataclass(slots=True)
class _Run:
    config: StorageBenchConfig
    sides: tuple[_Side, _Side]  # tier, raw
    phases: dict[str, PhaseResult] = field(default_factory=dict)

    def pair(self, name: str, trace: Iterator[BlockOp], max_write_bytes: int) -> list[BlockOp]:
        """`rounds` slices of `trace`: one side time-boxed, the other replaying exactly its ops.

        NOTE: the side that leads alternates (tier, raw, raw, tier, ...) so that neither always
        runs on a disk the other just left busy; slices of both sides add up to the phase.
        A first, untimed round (WARMUP_ROUNDS) takes the cold start, which would otherwise slow
        the first round's leader, always the tier.
        """
        cfg, block_bytes = self.config, self.config.layout.page_size_bytes
        issued: list[BlockOp] = []
        for round_index in range(-WARMUP_ROUNDS, cfg.rounds):
            lead, follow = self.sides if round_index % 2 == 0 else self.sides[::-1]
            counted = round_index >= 0
            spent = sum(op.kind == "write" for op in issued) * block_bytes
            allowed = max_write_bytes - spent if counted else max_write_bytes // (cfg.rounds + WARMUP_ROUNDS)
            cursor = TraceCursor(trace, block_bytes=block_bytes,
                                 deadline=time.perf_counter() + cfg.duration_s / 2 / cfg.rounds,
                                 min_ops=max(2 * cfg.concurrency, 4), max_write_bytes=allowed)
            self._timed(name, lead, cursor, counted)
            self._timed(name, follow, TraceCursor.replay(cursor.issued, block_bytes), counted)
            issued += cursor.issued
        return issued

    def _timed(self, name: str, side: _Side, cursor: TraceCursor, counted: bool) -> None:
        from tqdm import tqdm

        with tqdm(desc=f"{side.label} {name}", unit="B", unit_scale=True, disable=not self.config.progress,
                  leave=False) as bar:
            result = side.run(name, cursor, self.config, bar)
        side.settle(cursor.issued)
        if counted:
            self.phases.setdefault(f"{side.label}_{name}", PhaseResult(name=name, block_bytes=result.block_bytes)) \
                .merge(result)


def run_storage_bench(config: StorageBenchConfig, tier_factory: TierFactory | None = None,
                      async_factory: AsyncFactory | None = None) -> dict[str, Any]:
    """Run both phases and return the report (see report.py for the keys).

    Args:
        config: what to run.
        tier_factory: builds the TierStore under test (default: DiskStore; RawFileTier when
            `config.calibrate`).
        async_factory: wraps it in its asyncio API when `config.api == "async"` (default: AsyncTier).
    """
    if not config.path.is_dir():
        raise ValueError(f"--path {config.path} is not an existing folder")
    if config.calibrate:
        tier_factory = RawFileTier
    budget = _budget(config)
    run_id = f"kvtier-bench-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    tier_dir = config.path / run_id  # NOTE: the raw side writes `ab/<hex>.raw` in the tier's own fan-out
    pool = data_pool(config.layout, config.workload.seed)
    disk_config = DiskTierConfig(path=str(tier_dir), capacity_bytes=2 * budget, fsync=config.fsync,
                                 codec=config.codec)
    tier_dir.mkdir()
    closers: list[Callable[[], Any]] = []
    try:
        store = (tier_factory or default_tier_factory)(config.layout, disk_config)
        closers.append(store.close)
        check_round_trip(store, config.layout, pool)
        tier_path = _object_path_fn(store)
        if config.api == "async":
            astore = (async_factory or default_async_factory)(store, config.concurrency)
            closers.insert(0, astore.close)
            tier = _Side("tier", tier_dir, async_op_fn=AsyncTierOps(astore, pool, config.concurrency).run,
                         path_of=tier_path)
        else:
            tier = _Side("tier", tier_dir, op_fn=TierOps(store, pool).run, path_of=tier_path)
        raw = RawFileTier(config.layout, disk_config, suffix=RAW_SUFFIX, pool=pool)
        closers.append(raw.remove_all)
        run = _Run(config, (tier, _Side("raw", tier_dir, op_fn=raw.run, path_of=_object_path_fn(raw))))
        chains = PrefixChains(config.workload)
        written = run.pair("write", write_trace(chains, len(pool)), budget // 2)
        spare = budget - len(written) * config.layout.page_size_bytes
        run.pair("mixed", mixed_trace(chains, written_blocks(written), len(pool)), spare)
        stats = dict(store.stats.as_dict()) if hasattr(store, "stats") else {}
    finally:
        for close in closers:
            close()
        if not config.keep:
            shutil.rmtree(tier_dir, ignore_errors=True)
    return build_report(config, run.phases, tier_dir, stats)
