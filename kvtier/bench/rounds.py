"""The storage bench's alternating rounds: one side time-boxed, every other side replaying exactly its ops.

Each side's slice is followed by its settle (flush and drop from the page cache the files it touched)
and a syncfs, all inside the block-layer count of the device under --path (diskstats.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kvtier.bench.diskstats import BlockCounts, read_counts
from kvtier.bench.page_cache import drop_cached, settle, sync_filesystem
from kvtier.bench.round_stats import WARMUP_ROUNDS
from kvtier.bench.runner import AsyncOpFn, PhaseResult, run_phase, run_phase_async
from kvtier.bench.workload import BlockOp, TraceCursor

if TYPE_CHECKING:
    from kvtier.bench.storage import StorageBenchConfig


class Side(Protocol):
    """A contender: `run` drives a cursor's ops, `settle` makes their files cold again."""

    @property
    def label(self) -> str: ...

    @property
    def can_lead(self) -> bool: ...  # whether it can be time-boxed (a tier or Python), or only replays (fio)

    def run(self, name: str, cursor: TraceCursor, config: Any, bar: Any) -> PhaseResult: ...

    def settle(self, ops: list[BlockOp]) -> None: ...


@dataclass(frozen=True, slots=True)
class OpSide:
    """A side driven op by op from Python threads (or tasks): the tier, or plain Python file I/O."""

    label: str
    folder: Path
    op_fn: Callable[[BlockOp], bool] | None = None
    async_op_fn: AsyncOpFn | None = None
    path_of: Callable[[BlockOp], str] | None = None  # the file an op touches; None: settle the whole folder
    can_lead: bool = True

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


def round_order(sides: Sequence[Side], round_index: int) -> list[Side]:
    """Who runs when in a round: [tier, python, fio...] on even rounds, [python, ...fio reversed, tier] on odd.

    NOTE: the leader alternates between the two sides that can be time-boxed, and the replays run
    in reverse on odd rounds, so that no side always runs on a disk another just left busy (fio
    runs after the tier in one round, before it in the next).
    """
    leaders = [s for s in sides if s.can_lead]
    followers = [s for s in sides if not s.can_lead]
    assert len(leaders) == 2, f"a round alternates two time-boxed sides, got {[s.label for s in leaders]}"
    if round_index % 2 == 0:
        return [leaders[0], leaders[1], *followers]
    return [leaders[1], *reversed(followers), leaders[0]]


@dataclass(slots=True)
class Rounds:
    """Runs phases in rounds and keeps, per `<side>_<phase>`, its timed result and its block-layer writes."""

    config: StorageBenchConfig
    device: str | None  # the block device under config.path, None when there is none
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    block_writes: dict[str, BlockCounts] = field(default_factory=dict)

    def run(self, name: str, sides: Sequence[Side], trace: Iterator[BlockOp], max_write_bytes: int) -> list[BlockOp]:
        """`rounds` slices of `trace`: the round's leader time-boxed, the other sides replaying its ops.

        NOTE: a first, untimed round (WARMUP_ROUNDS) takes the cold start, which would otherwise slow
        the first round's leader, always the tier; its ops still run on every side (fio reads later
        read the files it wrote).
        """
        cfg, block_bytes = self.config, self.config.layout.page_size_bytes
        issued: list[BlockOp] = []
        for round_index in range(-WARMUP_ROUNDS, cfg.rounds):
            lead, *follow = round_order(sides, round_index)
            counted = round_index >= 0
            left = max_write_bytes - sum(op.kind == "write" for op in issued) * block_bytes
            share = left // (cfg.rounds - round_index) if counted else max_write_bytes // (cfg.rounds + WARMUP_ROUNDS)
            allowed = min(left, max(share, block_bytes))  # NOTE: a share per round, so none is left empty
            cursor = TraceCursor(trace, block_bytes=block_bytes,
                                 deadline=time.perf_counter() + cfg.duration_s / 3 / cfg.rounds,
                                 min_ops=max(2 * cfg.concurrency, 4), max_write_bytes=allowed)
            self._timed(name, lead, cursor, counted)
            for side in follow:
                self._timed(name, side, TraceCursor.replay(cursor.issued, block_bytes), counted)
            issued += cursor.issued
        return issued

    def _timed(self, name: str, side: Side, cursor: TraceCursor, counted: bool) -> None:
        from tqdm import tqdm

        before = read_counts(self.device) if self.device else None
        with tqdm(desc=f"{side.label} {name}", unit="B", unit_scale=True, disable=not self.config.progress,
                  leave=False) as bar:
            result = side.run(name, cursor, self.config, bar)
        side.settle(cursor.issued)
        sync_filesystem(self.config.path)
        after = read_counts(self.device) if self.device else None
        if not counted:
            return
        key = f"{side.label}_{name}"
        self.phases.setdefault(key, PhaseResult(name=name, block_bytes=result.block_bytes)).merge(result)
        if before is not None and after is not None:
            self.block_writes[key] = self.block_writes.get(key, BlockCounts()) + (after - before)
