"""`kvtier bench storage`: the KV-offload pattern through a tier's public API against fio on the same disk.

Three phases, each cut into rounds; in a round one side (tier or python, alternating) runs time-boxed
and the others replay exactly its ops: same bytes, same thread count, files on the same filesystem
under the run's folder, and the page cache flushed and dropped for the files a slice touched after
every slice. The sides: the tier; `python`, plain Python buffered file I/O of the same objects
(python_io.py); and fio, buffered and O_DIRECT (fio_side.py), the ceiling, when it is installed.
Many short rounds rather than a few long ones: a disk's speed drifts over seconds, and only sides
measured close together see the same disk.
1. write: spill prefixes block by block;
2. read: prefix-read bursts with Zipf reuse of what the write phase spilled, reads alone;
3. mixed: the same bursts interleaved with new spills at `read_ratio` (tier and python only).
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvtier.bench.diskstats import device_of
from kvtier.bench.fio import FIO_MODES, INSTALL_HINT, direct_refusal, find_fio, fio_version
from kvtier.bench.fio_side import FioSide
from kvtier.bench.python_io import PYTHON_SUFFIX, PythonFileTier
from kvtier.bench.report import build_report
from kvtier.bench.rounds import OpSide, Rounds, Side
from kvtier.bench.tier_ops import (
    AsyncTierOps,
    TierOps,
    check_round_trip,
    data_pool,
)
from kvtier.bench.workload import (
    BlockOp,
    PrefixChains,
    WorkloadConfig,
    mixed_trace,
    read_trace,
    write_trace,
    written_blocks,
)
from kvtier.config import DiskTierConfig, KVLayout, check_positive_int
from kvtier.transfer.aio import AsyncTier

TierFactory = Callable[[KVLayout, DiskTierConfig], Any]  # returns a TierStore
AsyncFactory = Callable[[Any, int], AsyncTier]  # (TierStore, concurrency) -> its asyncio API
MAX_DEFAULT_BYTES = 16 << 30
FIO_DIR = "fio"  # fio's files: <run folder>/fio/<mode>/ab/<n>


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageBenchConfig:
    """One run of the storage bench. `max_bytes` caps what the tier writes (every other side as much)."""

    path: Path
    layout: KVLayout
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    concurrency: int = 4
    codec: str = "raw"
    fsync: bool = True
    duration_s: float = 10.0  # of the leading sides' I/O, a third per phase; replays add as much each
    rounds: int = 16  # slices per phase, alternating which side leads
    keep: bool = False
    max_bytes: int | None = None  # None: min(16 GiB, free space / (2 x the sides that write))
    progress: bool = False
    api: str = "sync"  # "sync": TierStore put/get on threads; "async": the asyncio API on one loop
    calibrate: bool = False  # python files in the tier's place too (an A/A run): the ratios' noise floor
    fio: bool = True  # fio's sides (the ceiling) when fio is on PATH; without it the ceiling is python
    direct_io: bool = False  # the tier in its O_DIRECT mode (DiskTierConfig.direct_io); python stays buffered

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


def _budget(config: StorageBenchConfig, num_writers: int) -> int:
    """Bytes the tier may write: --max-bytes, or min(16 GiB, the free space / (2 x the sides that write))."""
    free = shutil.disk_usage(config.path).free
    budget = config.max_bytes or min(MAX_DEFAULT_BYTES, free // (2 * num_writers))
    block_bytes = config.layout.page_size_bytes
    if num_writers * budget > free or budget < 2 * block_bytes:
        raise ValueError(f"bench needs {num_writers} x {budget} bytes (tier, python and fio's modes each write as "
                         f"much) with at least two blocks of {block_bytes} bytes each; {config.path} has {free} free; "
                         "free some space or pass a lower --max-bytes")
    return budget


def fio_plan(config: StorageBenchConfig) -> tuple[str | None, dict[str, Any]]:
    """The fio binary (None: no fio sides) and what the report says about fio: version, modes, why not."""
    binary = find_fio() if config.fio else None
    facts: dict[str, Any] = {"binary": binary, "version": None, "modes": [], "skipped": {}}
    if not config.fio:
        facts["skipped"] = {"all": "turned off (--no-fio)"}
    elif binary is None:
        facts["skipped"] = {"all": f"fio not found on PATH ({INSTALL_HINT})"}
        warnings.warn("kvtier bench storage: fio not found on PATH, so the ratios fall back to plain Python file "
                      f"I/O, which is no ceiling; install fio ({INSTALL_HINT})", RuntimeWarning, stacklevel=3)
    else:
        facts["version"] = fio_version(binary)
        refusal = direct_refusal(config.path, config.layout.page_size_bytes)
        facts["modes"] = [m for m in FIO_MODES if m != "direct" or refusal is None]
        facts["skipped"] = {"direct": refusal} if refusal else {}
    return binary, facts


def _tier_side(config: StorageBenchConfig, store: Any, tier_dir: Path, pool: list[torch.Tensor],
               closers: list[Callable[[], Any]], async_factory: AsyncFactory | None) -> OpSide:
    tier_path = _object_path_fn(store)
    if config.calibrate:  # NOTE: the python side's op, not get() into a tensor (7 us more an op): a true A/A
        return OpSide("tier", tier_dir, op_fn=store.run, path_of=tier_path)
    if config.api == "async":
        astore = (async_factory or default_async_factory)(store, config.concurrency)
        closers.insert(0, astore.close)
        return OpSide("tier", tier_dir, async_op_fn=AsyncTierOps(astore, pool, config.concurrency).run,
                      path_of=tier_path)
    return OpSide("tier", tier_dir, op_fn=TierOps(store, pool).run, path_of=tier_path)


def run_storage_bench(config: StorageBenchConfig, tier_factory: TierFactory | None = None,
                      async_factory: AsyncFactory | None = None) -> dict[str, Any]:
    """Run the three phases and return the report (see report.py for the keys).

    Args:
        config: what to run.
        tier_factory: builds the TierStore under test (default: DiskStore; PythonFileTier when
            `config.calibrate`, whose ops are then the python side's own, so that the run is A/A).
        async_factory: wraps it in its asyncio API when `config.api == "async"` (default: AsyncTier).
    """
    if not config.path.is_dir():
        raise ValueError(f"--path {config.path} is not an existing folder")
    fio_binary, fio_facts = fio_plan(config)
    budget = _budget(config, 2 + len(fio_facts["modes"]))
    run_id = f"kvtier-bench-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    tier_dir = config.path / run_id  # NOTE: the python side writes `ab/<hex>.pyio` in the tier's own fan-out
    pool = data_pool(config.layout, config.workload.seed)
    disk_config = DiskTierConfig(path=str(tier_dir), capacity_bytes=2 * budget, fsync=config.fsync,
                                 codec=config.codec, direct_io=config.direct_io)
    tier_dir.mkdir()
    closers: list[Callable[[], Any]] = [lambda: shutil.rmtree(tier_dir / FIO_DIR, ignore_errors=True)]
    try:
        store = PythonFileTier(config.layout, disk_config, pool=pool) if config.calibrate \
            else (tier_factory or default_tier_factory)(config.layout, disk_config)
        closers.append(store.close)
        check_round_trip(store, config.layout, pool)
        python = PythonFileTier(config.layout, disk_config, suffix=PYTHON_SUFFIX, pool=pool)
        closers.append(python.remove_all)
        sides: list[Side] = [_tier_side(config, store, tier_dir, pool, closers, async_factory),
                             OpSide("python", tier_dir, op_fn=python.run, path_of=_object_path_fn(python))]
        sides += [FioSide(fio_binary, tier_dir / FIO_DIR / mode, mode=mode, object_bytes=config.layout.page_size_bytes,
                          fsync=config.fsync, concurrency=config.concurrency)
                  for mode in fio_facts["modes"] if fio_binary is not None]
        run = Rounds(config, device_of(config.path))
        chains = PrefixChains(config.workload)
        written = run.run("write", sides, write_trace(chains, len(pool)), budget // 2)
        run.run("read", sides, read_trace(chains, written_blocks(written)), 0)
        spare = budget - len(written) * config.layout.page_size_bytes
        run.run("mixed", sides[:2], mixed_trace(chains, written_blocks(written), len(pool)), spare)
        stats = dict(store.stats.as_dict()) if hasattr(store, "stats") else {}
        stats["direct_io"] = bool(getattr(store, "direct", False))  # the mode the tier ran in (it may fall back)
    finally:
        for close in closers:
            close()
        if not config.keep:
            shutil.rmtree(tier_dir, ignore_errors=True)
    return build_report(config, run.phases, tier_dir, stats, fio=fio_facts,
                        block_writes=run.block_writes, device=run.device)
