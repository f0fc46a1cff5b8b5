"""Run one phase of block ops on N worker threads and time every op with `time.perf_counter`."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from kvtier.bench.workload import BlockOp, TraceCursor
from kvtier.errors import KVTierError, TierFullError

OpFn = Callable[[BlockOp], bool]  # True when the block moved, False on a miss
AsyncOpFn = Callable[[BlockOp, int], Awaitable[bool]]  # (op, worker index); same meaning


@dataclass(slots=True)
class PhaseResult:
    """What a phase did: op counts, per-op latencies (seconds) by kind, and its wall time."""

    name: str
    block_bytes: int
    wall_s: float = 0.0
    latencies_s: dict[str, list[float]] = field(default_factory=lambda: {"write": [], "read": []})
    misses: int = 0
    rejected: int = 0
    slice_walls: list[float] = field(default_factory=list)  # wall time of each slice, in run order
    slice_ops: list[dict[str, int]] = field(default_factory=list)  # ops moved in each slice, by kind

    def merge(self, other: PhaseResult) -> None:
        """Add another slice of the same phase (rounds interleave tier and raw slices)."""
        self.wall_s += other.wall_s
        for kind, values in other.latencies_s.items():
            self.latencies_s[kind].extend(values)
        self.misses += other.misses
        self.rejected += other.rejected
        self.slice_walls += other.slice_walls
        self.slice_ops += other.slice_ops

    def close_slice(self) -> None:
        """Record this result, a single slice so far, as one slice (its wall and op counts)."""
        self.slice_walls.append(self.wall_s)
        self.slice_ops.append({kind: len(values) for kind, values in self.latencies_s.items()})

    def num_ops(self, kind: str) -> int:
        return len(self.latencies_s[kind])

    def bytes_moved(self, kind: str) -> int:
        return self.num_ops(kind) * self.block_bytes

    def gbps(self, kind: str) -> float:
        return self.bytes_moved(kind) / self.wall_s / 1e9 if self.wall_s > 0 else 0.0


class BenchAbortedError(KVTierError):
    """A worker hit an unexpected error; the phase stopped and the cause is chained."""


def run_phase(name: str, op_fn: OpFn, cursor: TraceCursor, *, concurrency: int, block_bytes: int,
              progress: tqdm | None = None) -> PhaseResult:
    """Drive `cursor`'s ops through `op_fn` on `concurrency` threads until it runs dry.

    Misses (op_fn returned False) and TierFullError count against the tier and are excluded
    from the bytes moved; any other exception stops the phase and is re-raised.
    """
    result = PhaseResult(name=name, block_bytes=block_bytes)
    lock = threading.Lock()
    failures: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        local: dict[str, list[float]] = {"write": [], "read": []}
        misses = rejected = 0
        try:
            while not stop.is_set():
                op = cursor.next()
                if op is None:
                    break
                start = time.perf_counter()
                try:
                    moved = op_fn(op)
                except TierFullError:
                    rejected += 1
                    continue
                if moved:
                    local[op.kind].append(time.perf_counter() - start)
                else:
                    misses += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failures.append(exc)
            stop.set()
        with lock:
            for kind, values in local.items():
                result.latencies_s[kind].extend(values)
            result.misses += misses
            result.rejected += rejected

    threads = [threading.Thread(target=worker, name=f"bench-{name}-{i}", daemon=True)
               for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    _watch(threads, cursor, progress, block_bytes)
    result.wall_s = time.perf_counter() - start
    result.close_slice()
    if failures:
        raise BenchAbortedError(f"phase {name!r} stopped: {failures[0]!r}") from failures[0]
    return result


def run_phase_async(name: str, op_fn: AsyncOpFn, cursor: TraceCursor, *, concurrency: int,
                    block_bytes: int, progress: tqdm | None = None) -> PhaseResult:
    """`run_phase` for an asyncio API: `concurrency` tasks on one event loop, same accounting."""
    result = PhaseResult(name=name, block_bytes=block_bytes)

    async def worker(index: int) -> None:
        while (op := cursor.next()) is not None:
            start = time.perf_counter()
            try:
                moved = await op_fn(op, index)
            except TierFullError:
                result.rejected += 1
                continue
            if moved:
                result.latencies_s[op.kind].append(time.perf_counter() - start)
            else:
                result.misses += 1

    async def watch() -> None:
        shown = 0
        while progress is not None:
            await asyncio.sleep(0.2)
            progress.update((len(cursor.issued) - shown) * block_bytes)
            shown = len(cursor.issued)

    async def main() -> None:
        start = time.perf_counter()
        watcher = asyncio.create_task(watch())
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            result.wall_s = time.perf_counter() - start
            result.close_slice()
            for task in (watcher, *tasks):
                task.cancel()

    try:
        asyncio.run(main())
    except Exception as exc:
        raise BenchAbortedError(f"phase {name!r} stopped: {exc!r}") from exc
    return result


def _watch(threads: list[threading.Thread], cursor: TraceCursor, progress: tqdm | None,
           block_bytes: int) -> None:
    """Wait for the workers; feed the progress bar from the issued-op count (no worker locking)."""
    shown = 0
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.2)
            if progress is not None:
                issued = len(cursor.issued)
                progress.update((issued - shown) * block_bytes)
                shown = issued
    if progress is not None:
        progress.update((len(cursor.issued) - shown) * block_bytes)
