"""Device -> host copies of evicted blocks, in one place: pinned host memory and a side stream on CUDA.

The blocks are reused as soon as the eviction hook returns, so the copy must have read them by
then: on CUDA the side stream waits for the compute stream's writes to the blocks, the compute
stream waits for the copy before touching them again, and the host waits for the copy, since the
tiers read the result from the CPU right after. A pinned destination is what lets the D2H run at
the link's speed (a pageable one is copied twice).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from kvtier.tiers.device import DevicePool


class DeviceToHost:
    """Copies device-pool blocks out to host tensors the caller then owns."""

    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool
        self._stream = torch.cuda.Stream(pool.device) if pool.device.type == "cuda" else None  # type: ignore[no-untyped-call]

    def copy_out(self, block_ids: Sequence[int]) -> torch.Tensor:
        """The blocks as a new host tensor `[n, num_layers, 2, num_kv_heads, block_size, head_dim]`."""
        if self._stream is None:
            return self.pool.read_blocks(block_ids)  # a host pool: the gather is the copy
        compute = torch.cuda.current_stream(self.pool.device)
        self._stream.wait_stream(compute)
        with torch.cuda.stream(self._stream):
            packed = self.pool.read_blocks(block_ids)
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
        compute.wait_stream(self._stream)
        self._stream.synchronize()
        return host
