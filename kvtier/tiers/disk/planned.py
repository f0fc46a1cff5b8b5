"""Planned reads: the objects of a prefix read again and again into the same shape of output (a
TieredCache layer's K/V, read through each decode step), with the per-object work done once.

A plan holds, per object, what `read_many_known` needs besides the output (names, sizes, the
header checksum the store verified, the key's pieces); executing it cuts the output into each
block's runs in one go (`StorageViews.batch_runs`) and makes one compiled call per run of objects
(DiskStore.read_planned). An object it does not vouch for fails the plan and loses its remembered
header checksum, and the caller reads the usual way (read_blocks), which says what is wrong: a plan
never decides what a bad object is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvtier.config import KVLayout
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk.names import object_name
from kvtier.tiers.disk.read import MAX_OUT_RUNS, KnownCall, Pieces, key_pieces
from kvtier.tiers.format import header_bytes_for, num_segments
from kvtier.tiers.format.codecs import StorageViews
from kvtier.tiers.format.header import PAYLOAD_CHECKSUM_AT


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Known-header reads of `keys`, in order: for each, (fanout, name, header bytes, object bytes,
    header checksum, the key's pieces)."""

    keys: tuple[BlockKey, ...]
    objects: tuple[tuple[str, str, int, int, int, Pieces], ...]


def plan_reads(keys: list[BlockKey], header_checksums: list[int], sizes: list[int],
               layout: KVLayout, page_aligned: bool = False) -> ReadPlan | None:
    """The plan of raw objects of `keys` whose files are `sizes` bytes; None if any is not the size
    of a raw object of its key (a zstd one: a planned read of it could only fail) with the store's
    kind of header (`page_aligned`: its O_DIRECT mode)."""
    segments = num_segments(layout)
    objects = []
    for key, checksum, size in zip(keys, header_checksums, sizes):
        header_len = header_bytes_for(len(key.token_ids), segments, page_aligned)
        if size != header_len + layout.page_size_bytes:
            return None
        objects.append((*object_name(key.block_hash), header_len, size, checksum, key_pieces(key, header_len)))
    return ReadPlan(tuple(keys), tuple(objects))


def planned_calls(plan: ReadPlan, outs: torch.Tensor, layout: KVLayout) -> list[KnownCall] | None:
    """`read_many_known`'s calls that read the plan's objects into `outs[i]` (`[len(plan.keys),
    *block_shape]` on the CPU, any non-overlapping strides), or None: `outs` cannot be cut into runs.

    Raises:
        ValueError: `outs` is not `[len(plan.keys), *block_shape]` of the layout's dtype.
    """
    if tuple(outs.shape) != (len(plan.keys), *layout.block_shape) or outs.dtype != layout.dtype:
        raise ValueError(f"a plan of {len(plan.keys)} blocks reads into [{len(plan.keys)}, "
                         f"{', '.join(map(str, layout.block_shape))}] {layout.dtype}, got {list(outs.shape)} {outs.dtype}")
    payloads = StorageViews().batch_runs(outs, MAX_OUT_RUNS)
    if payloads is None:
        return None
    # NOTE: a header buffer per object: runs of the calls are read on several threads at once
    return [(fanout, name, (memoryview(bytearray(header_len)), *payload), object_len, checksum, PAYLOAD_CHECKSUM_AT,
             pieces) for (fanout, name, header_len, object_len, checksum, pieces), payload in zip(plan.objects, payloads)]
