"""The storage bench end to end on a fake tier (fio left out: tests/bench/test_fio.py runs it): keys, rounds, --keep."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from kvtier.bench.report import format_table
from kvtier.bench.storage import (
    StorageBenchConfig,
    layout_for_block_bytes,
    run_storage_bench,
)
from kvtier.bench.tier_ops import BenchCheckError, data_pool
from kvtier.bench.workload import PrefixChains, write_trace
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.transfer.aio import AsyncTier
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


def short_config(path: Path, **overrides: object) -> StorageBenchConfig:
    base: dict[str, object] = {"path": path, "layout": layout_for_block_bytes(BLOCK_BYTES), "duration_s": 0.4,
                               "fsync": False, "concurrency": 2, "max_bytes": 16 << 20, "fio": False}
    return StorageBenchConfig(**{**base, **overrides})  # type: ignore[arg-type]


REQUIRED = ("write_gbps", "read_gbps", "python_write_gbps", "python_read_gbps", "write_ratio", "read_ratio",
            "write_iops", "read_iops", "python_write_iops", "python_read_iops", "bytes_per_token", "prefix_load_ms",
            "mixed_read_gbps", "python_mixed_read_gbps", "mixed_read_ratio", "raw_write_gbps", "raw_read_gbps")


def test_short_run_reports_every_key_with_sane_values(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path), MemoryStore)
    for key in REQUIRED:
        assert key in report, key
    for key in ("write_gbps", "read_gbps", "python_write_gbps", "python_read_gbps", "write_ratio", "read_ratio",
                "mixed_read_gbps", "mixed_read_ratio"):
        assert report[key] > 0, (key, report[key])
    assert report["write_ops"] == report["python_write_ops"] > 0
    assert report["read_ops"] == report["python_read_ops"] > 0 and report["mixed_read_ops"] > 0
    assert report["write_ceiling"] == report["read_ceiling"] == "python"  # fio left out
    assert report["write_ratio"] == report["write_python_ratio"]
    assert report["raw_write_gbps"] == report["python_write_gbps"]  # the former name, for older readers
    for side in ("write_", "read_", "python_write_", "python_read_", "mixed_read_"):
        assert 0 <= report[f"{side}p50_ms"] <= report[f"{side}p90_ms"] <= report[f"{side}p99_ms"]
    assert report["misses"] == 0 and report["rejected"] == 0
    assert report["bytes_per_token"] == BLOCK_BYTES / 16
    loads = [report["prefix_load_ms"][n] for n in ("1024", "8192", "32768")]
    assert 0 < loads[0] < loads[1] < loads[2]
    assert report["config"]["block_bytes"] == BLOCK_BYTES
    assert report["device"]["free_bytes"] > 0 and report["tier_path"] is None
    assert list(tmp_path.iterdir()) == []  # tier and python folders removed without --keep


def test_async_api_moves_the_same_ops_as_the_python_side(tmp_path: Path) -> None:
    wrappers: list[AsyncTier] = []

    def wrap(store: MemoryStore, concurrency: int) -> AsyncTier:
        wrappers.append(AsyncTier(store, max_concurrency=concurrency))
        return wrappers[-1]

    report = run_storage_bench(short_config(tmp_path, api="async"), MemoryStore, wrap)
    assert report["config"]["api"] == "async" and wrappers[0].is_closed
    assert report["write_ops"] == report["python_write_ops"] > 0 and report["read_ops"] == report["python_read_ops"] > 0
    assert report["misses"] == 0 and report["read_gbps"] > 0


def test_write_bytes_respect_max_bytes(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path, duration_s=3.0, max_bytes=8 * BLOCK_BYTES), MemoryStore)
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


def test_every_round_is_reported_for_every_phase(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path, rounds=6), MemoryStore)
    for key in ("write_ratio", "read_ratio", "write_python_ratio", "mixed_read_ratio"):
        spread = report[f"{key}_rounds"]
        assert spread["rounds"] == 6, (key, spread)
        assert 0 < spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
        low, high = report[f"{key}_ci95"]
        assert 0 < low <= high, (key, report[f"{key}_ci95"])
    assert "ratio per round (6 rounds)" in format_table(report)


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
    counted_reads = report["read_ops"] + report["mixed_read_ops"]
    round_check = 1  # check_round_trip's own put and get
    assert report["config"]["warmup_rounds"] == 1 and report["write_ratio_rounds"]["rounds"] == 4
    assert stores[0].ops["write"] - round_check > counted_writes, (stores[0].ops, counted_writes)
    assert stores[0].ops["read"] - round_check > counted_reads, (stores[0].ops, counted_reads)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_keep_leaves_objects_the_disk_tier_reads_back(tmp_path: Path, api: str) -> None:
    disk = pytest.importorskip("kvtier.tiers.disk")
    config = short_config(tmp_path, keep=True, api=api)
    report = run_storage_bench(config)
    tier_path = Path(report["tier_path"])
    assert tier_path.is_dir() and [p.name for p in tmp_path.iterdir()] == [tier_path.name]
    assert list(tier_path.rglob("*.pyio")) == []  # the python side's files do not outlive the run
    pool = data_pool(config.layout, config.workload.seed)
    first = next(write_trace(PrefixChains(config.workload), len(pool)))
    store = disk.DiskStore(config.layout, DiskTierConfig(path=str(tier_path), capacity_bytes=1 << 30))
    try:
        got = store.get(first.key)
        assert got is not None and torch.equal(got, pool[first.data_index])
    finally:
        store.close()


def test_calibrate_runs_the_python_sides_own_op_in_the_tiers_slot(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--calibrate is A/A: both slots run PythonFileTier.run; get() into a tensor (the TierStore path,
    about 7 us more an op) is called only by the round trip checked before timing."""
    from kvtier.bench.python_io import PythonFileTier

    calls = {"get": 0, "run": 0}
    real_get, real_run = PythonFileTier.get, PythonFileTier.run

    def counted_get(self: PythonFileTier, *args: object, **kwargs: object) -> object:
        calls["get"] += 1
        return real_get(self, *args, **kwargs)  # type: ignore[arg-type]

    def counted_run(self: PythonFileTier, *args: object) -> bool:
        calls["run"] += 1
        return real_run(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PythonFileTier, "get", counted_get)
    monkeypatch.setattr(PythonFileTier, "run", counted_run)
    report = run_storage_bench(short_config(tmp_path, calibrate=True))
    ops = sum(report[f"{side}{kind}_ops"] for side in ("", "python_") for kind in ("write", "read", "mixed_read"))
    assert calls["get"] == 1 and calls["run"] >= ops > 0
