"""The storage bench's trace: reads hit only written blocks at the read ratio, in prefix bursts, per seed."""
from __future__ import annotations

import itertools

import pytest

from kvtier.bench.workload import (
    PrefixChains,
    WorkloadConfig,
    mixed_trace,
    read_trace,
    write_trace,
    written_blocks,
)


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


def test_read_trace_reads_alone_only_written_blocks_apart_from_the_mixed_draws() -> None:
    chains = PrefixChains(WorkloadConfig(read_ratio=0.5, seed=2))
    writes = [op for op, _ in zip(write_trace(chains, 8), range(400))]
    on_tier = {op.key.block_hash for op in writes}
    reads = [op for op, _ in zip(read_trace(chains, written_blocks(writes)), range(1000))]
    assert all(op.kind == "read" and op.key.block_hash in on_tier for op in reads)
    mixed_reads = [op for op in itertools.islice(mixed_trace(chains, written_blocks(writes), 8), 2000)
                   if op.kind == "read"][:1000]
    assert [op.key for op in reads] != [op.key for op in mixed_reads]  # a seed of its own
