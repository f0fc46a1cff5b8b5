"""A fio side of the storage bench: one fio mode replaying each slice's block ops as fio jobs.

Op i of a slice goes to thread i % concurrency, as the tier's workers take ops in turn. Writes create
one file per block, `ab/<n>` in a fan-out like the tier's under this side's own folder; reads read
the file its block was written to, so a fio read is always of a file fio wrote.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kvtier.bench.fio import FioJob, run_job, split_names
from kvtier.bench.page_cache import drop_cached
from kvtier.bench.runner import PhaseResult
from kvtier.bench.workload import BlockOp, TraceCursor
from kvtier.tiers.disk.names import FANOUT_DIRS
from kvtier.types import BlockHash


class FioSide:
    """The `fio_<mode>` side: replays only (fio cannot be time-boxed to a trace), never leads a round."""

    can_lead = False

    def __init__(self, binary: str, folder: Path, *, mode: str, object_bytes: int, fsync: bool,
                 concurrency: int) -> None:
        self.label = f"fio_{mode}"
        self.folder = folder
        self._binary = binary
        self._direct = mode == "direct"
        self._object_bytes = object_bytes
        self._fsync = fsync
        self._concurrency = concurrency
        self._names: dict[BlockHash, str] = {}
        for name in FANOUT_DIRS:
            (folder / name).mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cursor: TraceCursor, config: Any, bar: Any) -> PhaseResult:
        """Replay every op the cursor hands out; a slice is all writes or all reads.

        Raises:
            FioError: fio failed or moved fewer objects than the slice.
        """
        ops = list(iter(cursor.next, None))
        kinds = {op.kind for op in ops}
        if len(kinds) > 1:
            raise ValueError(f"{self.label} replays slices of one kind, got {sorted(kinds)} (the mixed phase "
                             "has no fio side)")
        result = PhaseResult(name=f"{self.label} {name}", block_bytes=self._object_bytes)
        kind = kinds.pop() if kinds else "write"
        names: list[list[str]] = [[] for _ in range(self._concurrency)]
        for index, op in enumerate(ops):
            names[index % self._concurrency].append(self._file_of(op))
        for chunk in split_names(names):
            fio = run_job(self._binary, FioJob(kind=kind, folder=self.folder, object_bytes=self._object_bytes,
                                               direct=self._direct, fsync=self._fsync, names=chunk))
            result.wall_s += fio.runtime_s
            result.latencies_s[kind] += fio.latencies_s()
        result.close_slice()
        if bar is not None:
            bar.update(len(ops) * self._object_bytes)
        return result

    def settle(self, ops: list[BlockOp]) -> None:
        drop_cached(dict.fromkeys(str(self.folder / self._names[op.key.block_hash]) for op in ops))

    def _file_of(self, op: BlockOp) -> str:
        block_hash = op.key.block_hash
        if op.kind == "write":
            self._names.setdefault(block_hash, f"{block_hash.hex()[:2]}/{len(self._names):x}")
        elif block_hash not in self._names:
            raise ValueError(f"{self.label} was asked to read block {block_hash.hex()[:16]}... that it never wrote")
        return self._names[block_hash]
