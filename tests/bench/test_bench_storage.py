"""The storage bench: trace shape, report keys and sanity, raw ceiling, --keep (no timed assertions)."""
from __future__ import annotations

import asyncio
import itertools
import random
import threading
from pathlib import Path

import pytest
import torch

from kvtier.bench.page_cache import drop_cached
from kvtier.bench.raw_tier import RAW_SUFFIX, RawFileTier
from kvtier.bench.report import format_table
from kvtier.bench.round_stats import ratio_interval, round_ratios
from kvtier.bench.runner import PhaseResult
from kvtier.bench.storage import (
    StorageBenchConfig,
    layout_for_block_bytes,
    run_storage_bench,
)
from kvtier.bench.tier_ops import BenchCheckError, data_pool
from kvtier.bench.workload import (
    PrefixChains,
    WorkloadConfig,
    mixed_trace,
    write_trace,
    written_blocks,
)
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.errors import TierIOError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.transfer.latency import percentile_ms
from kvtier.types import BlockHash, TierKind

BLOCK_BYTES = 64 << 10


class MemoryStore(TierStore):
    """The in-memory fake tier: a dict of cloned blocks, no capacity pressure."""

    kind = TierKind.HOST

    def __init__(self, layout: KVLayout, config: DiskTierConfig | None = None) -> None:
        super().__init__(layout)
        self.blocks: dict[BlockHash, torch.Tensor] = {}
        self._lock = threading.Lock()

    capacity_bytes = property(lambda self: 1 << 40)
    used_bytes = property(lambda self: len(self.blocks) * self.layout.page_size_bytes)
    num_blocks = property(lambda self: len(self.blocks))

    def contains(self, block_hash: BlockHash) -> bool:
        return block_hash in self.blocks

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        self.check_block(data)
        with self._lock:
            self.blocks[key.block_hash] = data.clone()

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        data = self.blocks.get(key.block_hash)
        if data is None:
            return None
        return out.copy_(data) if out is not None else data.clone()

    def pin(self, block_hash: BlockHash) -> None: ...

    def unpin(self, block_hash: BlockHash) -> None: ...

    def evict(self, block_hash: BlockHash) -> bool:
        with self._lock:
            return self.blocks.pop(block_hash, None) is not None


class ZeroStore(MemoryStore):
    """A lying tier: every read returns zeros."""

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        return torch.zeros(self.layout.block_shape, dtype=self.layout.dtype)


class AsyncMemory:
    """The asyncio face of a MemoryStore (what AsyncDiskStore is to DiskStore)."""

    def __init__(self, store: MemoryStore, concurrency: int) -> None:
        self.store = store
        self.closed = False

    async def put(self, key: BlockKey, data: torch.Tensor) -> None:
        await asyncio.to_thread(self.store.put, key, data)

    async def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        return await asyncio.to_thread(self.store.get, key, out)

    def close(self) -> None:
        self.closed = True


def short_config(path: Path, **overrides: object) -> StorageBenchConfig:
    base: dict[str, object] = {"path": path, "layout": layout_for_block_bytes(BLOCK_BYTES), "duration_s": 0.4,
                               "fsync": False, "concurrency": 2, "max_bytes": 16 << 20}
    return StorageBenchConfig(**{**base, **overrides})  # type: ignore[arg-type]


REQUIRED = ("write_gbps", "read_gbps", "raw_write_gbps", "raw_read_gbps", "write_ratio", "read_ratio",
            "write_iops", "read_iops", "raw_write_iops", "raw_read_iops", "bytes_per_token", "prefix_load_ms")


def test_short_run_reports_every_key_with_sane_values(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path), MemoryStore)
    for key in REQUIRED:
        assert key in report, key
    for key in ("write_gbps", "read_gbps", "raw_write_gbps", "raw_read_gbps", "write_ratio", "read_ratio"):
        assert report[key] > 0, (key, report[key])
    assert report["write_ops"] == report["raw_write_ops"] > 0
    assert report["read_ops"] == report["raw_read_ops"] > 0
    for side in ("write_", "read_", "raw_write_", "raw_read_"):
        assert 0 <= report[f"{side}p50_ms"] <= report[f"{side}p90_ms"] <= report[f"{side}p99_ms"]
    assert report["misses"] == 0 and report["rejected"] == 0
    assert report["bytes_per_token"] == BLOCK_BYTES / 16
    loads = [report["prefix_load_ms"][n] for n in ("1024", "8192", "32768")]
    assert 0 < loads[0] < loads[1] < loads[2]
    assert report["config"]["block_bytes"] == BLOCK_BYTES
    assert report["device"]["free_bytes"] > 0 and report["tier_path"] is None
    assert list(tmp_path.iterdir()) == []  # tier and raw folders removed without --keep


def test_async_api_moves_the_same_ops_as_the_raw_side(tmp_path: Path) -> None:
    wrappers: list[AsyncMemory] = []

    def wrap(store: MemoryStore, concurrency: int) -> AsyncMemory:
        wrappers.append(AsyncMemory(store, concurrency))
        return wrappers[-1]

    report = run_storage_bench(short_config(tmp_path, api="async"), MemoryStore, wrap)
    assert report["config"]["api"] == "async" and wrappers[0].closed
    assert report["write_ops"] == report["raw_write_ops"] > 0 and report["read_ops"] == report["raw_read_ops"] > 0
    assert report["misses"] == 0 and report["read_gbps"] > 0


def test_write_bytes_respect_max_bytes(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path, duration_s=30.0, max_bytes=8 * BLOCK_BYTES), MemoryStore)
    assert report["write_bytes"] + report["mixed_write_ops"] * BLOCK_BYTES <= 8 * BLOCK_BYTES


def test_lying_tier_is_refused_before_timing(tmp_path: Path) -> None:
    with pytest.raises(BenchCheckError, match="different bytes"):
        run_storage_bench(short_config(tmp_path), ZeroStore)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("block_bytes", [256 << 10, 1 << 20, 2 << 20, 64])
def test_layout_for_block_bytes_has_that_page_size(block_bytes: int) -> None:
    assert layout_for_block_bytes(block_bytes).page_size_bytes == block_bytes


@pytest.mark.parametrize("block_bytes", [0, -4, 1000, 63])
def test_layout_for_block_bytes_rejects_unrepresentable_sizes(block_bytes: int) -> None:
    with pytest.raises(ValueError, match="--block-bytes"):
        layout_for_block_bytes(block_bytes)


@pytest.mark.parametrize("read_ratio", [0.0, 0.3, 0.8, 1.0])
def test_mixed_trace_reads_only_written_blocks_at_the_read_ratio(read_ratio: float) -> None:
    chains = PrefixChains(WorkloadConfig(read_ratio=read_ratio, seed=3))
    writes = [op for op, _ in zip(write_trace(chains, 8), range(500))]
    written = written_blocks(writes)
    on_tier = {op.key.block_hash for op in writes}
    mixed = [op for op, _ in zip(mixed_trace(chains, written, 8), range(2000))]
    reads = [op for op in mixed if op.kind == "read"]
    assert abs(len(reads) - read_ratio * len(mixed)) <= 1
    assert all(op.key.block_hash in on_tier for op in reads)
    assert not {op.key.block_hash for op in mixed if op.kind == "write"} & on_tier  # written once


def test_prefix_reads_are_bursts_of_consecutive_chained_blocks() -> None:
    chains = PrefixChains(WorkloadConfig(read_ratio=1.0, seed=1))
    writes = [op for op, _ in zip(write_trace(chains, 8), range(300))]
    reads = [op for op, _ in zip(mixed_trace(chains, written_blocks(writes), 8), range(300))]
    for prev, op in itertools.pairwise(reads):
        if op.block_index:
            assert (op.prefix_id, op.block_index) == (prev.prefix_id, prev.block_index + 1)
    assert chains.key(0, 1).block_hash != chains.key(1, 1).block_hash


def test_trace_is_deterministic_per_seed() -> None:
    def keys(seed: int) -> list[bytes]:
        chains = PrefixChains(WorkloadConfig(seed=seed))
        return [op.key.block_hash for op, _ in zip(write_trace(chains, 8), range(100))]

    assert keys(5) == keys(5) != keys(6)


def test_raw_ceiling_round_trips_and_reports_missing_files(tmp_path: Path) -> None:
    layout = layout_for_block_bytes(BLOCK_BYTES)
    pool = data_pool(layout, seed=0)
    raw = RawFileTier(layout, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 30, fsync=False),
                      suffix=RAW_SUFFIX, pool=pool)
    op = next(write_trace(PrefixChains(WorkloadConfig()), len(pool)))
    raw.write(op)
    assert Path(raw.path_of(op.key.block_hash)).read_bytes() == pool[0].view(torch.uint8).numpy().tobytes()
    assert raw.path_of(op.key.block_hash) == f"{tmp_path}/{op.key.block_hash.hex()[:2]}/{op.key.block_hash.hex()}.raw"
    raw.read(op)
    Path(raw.path_of(op.key.block_hash)).unlink()
    with pytest.raises(TierIOError, match="missing"):
        raw.read(op)


def test_round_ratios_pair_slices_in_order() -> None:
    tier = PhaseResult("write", 1, slice_walls=[1.0, 2.0, 4.0, 1.0])
    raw = PhaseResult("write", 1, slice_walls=[2.0, 1.0, 3.0, 1.0])  # ratios 2, 0.5, 0.75, 1
    spread = round_ratios(tier, raw)
    assert spread["rounds"] == 4 and spread["min"] == 0.5 and spread["max"] == 2.0
    assert spread["median"] == pytest.approx(0.875)
    assert spread["q1"] == pytest.approx(0.6875) and spread["q3"] == pytest.approx(1.25)
    assert round_ratios(PhaseResult("w", 1), PhaseResult("w", 1))["median"] is None
    with pytest.raises(ValueError):  # unpaired slices are a bench bug, not a statistic
        round_ratios(tier, PhaseResult("write", 1, slice_walls=[1.0]))


def rounds_of(walls: list[tuple[float, float]], ops: list[tuple[int, int]]) -> tuple[PhaseResult, PhaseResult]:
    """Tier and raw write phases from per-round (tier, raw) walls and moved-op counts."""
    tier = PhaseResult("write", 1, slice_walls=[t for t, _ in walls], slice_ops=[{"write": t} for t, _ in ops])
    raw = PhaseResult("write", 1, slice_walls=[r for _, r in walls], slice_ops=[{"write": r} for _, r in ops])
    return tier, raw


def test_ratio_interval_is_exact_when_every_round_agrees() -> None:
    tier, raw = rounds_of([(1.25 * w, w) for w in (1.0, 2.0, 0.5, 3.0, 1.5, 0.7)], [(10, 10)] * 6)
    assert ratio_interval(tier, raw, "write") == pytest.approx([0.8, 0.8])
    tier, raw = rounds_of([(1.0, 1.0)] * 6, [(9, 10)] * 6)  # a miss in every round moves 9 of 10
    assert ratio_interval(tier, raw, "write") == pytest.approx([0.9, 0.9])


def test_ratio_interval_keeps_the_leader_alternation() -> None:
    # The follower is twice as fast in every round: alternation cancels it exactly, in any resample
    # that keeps as many tier-led (even) as raw-led (odd) rounds.
    tier, raw = rounds_of([(2.0, 1.0), (1.0, 2.0)] * 4, [(10, 10)] * 8)
    assert ratio_interval(tier, raw, "write") == pytest.approx([1.0, 1.0])


def test_ratio_interval_widens_with_noise_and_holds_the_pooled_ratio() -> None:
    gen = random.Random(1)
    walls = [(gen.uniform(0.5, 2.0), gen.uniform(0.5, 2.0)) for _ in range(16)]
    tier, raw = rounds_of(walls, [(10, 10)] * 16)
    low, high = ratio_interval(tier, raw, "write") or (None, None)
    pooled = sum(r for _, r in walls) / sum(t for t, _ in walls)
    assert low is not None and high is not None and low < pooled < high and high - low > 0.1
    narrow = ratio_interval(*rounds_of(walls * 16, [(10, 10)] * 256), "write")
    assert narrow is not None and narrow[1] - narrow[0] < (high - low) / 2


def test_ratio_interval_needs_two_rounds_with_op_counts() -> None:
    assert ratio_interval(*rounds_of([(1.0, 1.0)], [(10, 10)]), "write") is None
    walls_only = PhaseResult("write", 1, slice_walls=[1.0, 1.0])
    assert ratio_interval(walls_only, walls_only, "write") is None
    assert ratio_interval(*rounds_of([(1.0, 1.0)] * 4, [(0, 0)] * 4), "write") is None  # nothing moved


def test_every_round_is_reported_for_both_phases(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path, rounds=6), MemoryStore)
    for kind in ("write", "read"):
        spread = report[f"{kind}_ratio_rounds"]
        assert spread["rounds"] == 6, spread
        assert 0 < spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
        low, high = report[f"{kind}_ratio_ci95"]
        assert 0 < low <= high, report[f"{kind}_ratio_ci95"]
    assert "ratio 95% interval" in format_table(report)


class CountingStore(MemoryStore):
    """MemoryStore that counts the block ops it served."""

    def __init__(self, layout: KVLayout, config: DiskTierConfig | None = None) -> None:
        super().__init__(layout, config)
        self.ops = {"write": 0, "read": 0}

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        super().put(key, data)
        with self._lock:
            self.ops["write"] += 1

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        with self._lock:
            self.ops["read"] += 1
        return super().get(key, out)


def test_each_phase_starts_with_an_untimed_warm_up_round(tmp_path: Path) -> None:
    stores: list[CountingStore] = []
    report = run_storage_bench(short_config(tmp_path, rounds=4),
                               lambda layout, config: stores.append(CountingStore(layout, config)) or stores[-1])
    counted_writes = report["write_ops"] + report["mixed_write_ops"]
    round_check = 1  # check_round_trip's own put and get
    assert report["config"]["warmup_rounds"] == 1 and report["write_ratio_rounds"]["rounds"] == 4
    assert stores[0].ops["write"] - round_check > counted_writes, (stores[0].ops, counted_writes)
    assert stores[0].ops["read"] - round_check > report["read_ops"], (stores[0].ops, report["read_ops"])


def test_drop_cached_counts_the_files_it_flushed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 4096)
    assert drop_cached([str(tmp_path / "a"), str(tmp_path / "gone")]) == 1


def test_percentile_is_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(values, 50) == pytest.approx(50.0)
    assert percentile_ms(values, 99) == pytest.approx(99.0)
    assert percentile_ms([], 50) is None


@pytest.mark.parametrize("api", ["sync", "async"])
def test_keep_leaves_objects_the_disk_tier_reads_back(tmp_path: Path, api: str) -> None:
    disk = pytest.importorskip("kvtier.tiers.disk")
    config = short_config(tmp_path, keep=True, api=api)
    report = run_storage_bench(config)
    tier_path = Path(report["tier_path"])
    assert tier_path.is_dir() and [p.name for p in tmp_path.iterdir()] == [tier_path.name]
    assert list(tier_path.rglob("*.raw")) == []  # the raw side's files do not outlive the run
    pool = data_pool(config.layout, config.workload.seed)
    first = next(write_trace(PrefixChains(config.workload), len(pool)))
    store = disk.DiskStore(config.layout, DiskTierConfig(path=str(tier_path), capacity_bytes=1 << 30))
    try:
        got = store.get(first.key)
        assert got is not None and torch.equal(got, pool[first.data_index])
    finally:
        store.close()


def test_raw_file_tier_round_trips_misses_and_evicts(tmp_path: Path) -> None:
    layout = layout_for_block_bytes(BLOCK_BYTES)
    tier = RawFileTier(layout, DiskTierConfig(path=str(tmp_path / "t"), capacity_bytes=1 << 30))
    pool = data_pool(layout, seed=1)
    key = next(write_trace(PrefixChains(WorkloadConfig()), len(pool))).key
    assert tier.get(key) is None and not tier.contains(key.block_hash)
    tier.put(key, pool[0])
    assert tier.contains(key.block_hash) and tier.num_blocks == 1
    assert torch.equal(tier.get(key), pool[0])
    strided = torch.empty(layout.block_shape[::-1], dtype=layout.dtype).permute(4, 3, 2, 1, 0)
    assert tier.get(key, out=strided) is strided and torch.equal(strided, pool[0])
    assert tier.evict(key.block_hash) and not tier.evict(key.block_hash) and tier.num_blocks == 0
