"""DevicePool: the per-layer paged K/V cache tensors on the compute device, addressed by block id."""
from __future__ import annotations

import mmap
from collections.abc import Sequence

import torch

from kvtier import ops
from kvtier.config import KVLayout, check_positive_int


class DevicePool:
    """One block-major tensor `[num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim]`.

    NOTE: block `i` is `kv_cache[i]`, contiguous and laid out byte for byte as a block object's
    payload (`layout.block_shape`), so a block read from a file lands in the pool with one read and
    no copy after it, and copying blocks out is one copy per run of blocks. `k_cache(l)` and
    `v_cache(l)` are strided views in the per-layer shape the attention kernels read (every
    kernel takes the block stride).
    """

    def __init__(self, layout: KVLayout, num_blocks: int, device: torch.device | str = "cpu", *,
                 prefault: bool = True) -> None:
        check_positive_int("DevicePool", "num_blocks", num_blocks)
        self.layout = layout
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        shape = (num_blocks, *layout.block_shape)
        self._mapping: mmap.mmap | None = None
        if self.device.type == "cpu":
            # NOTE: an anonymous mapping is zero pages. MAP_POPULATE makes them all now (57 ms for 189 MB
            # here, half of torch.zeros' write); without it the kernel makes each on first touch, so a
            # pool sized for a whole context window costs only what is written, but a restore that
            # lands in fresh pages pays the faults: 189 MB took 500 ms instead of 20 ms here
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (mmap.MAP_POPULATE if prefault else 0)
            self._mapping = mmap.mmap(-1, num_blocks * layout.page_size_bytes, flags=flags)
            self.kv_cache = torch.frombuffer(self._mapping, dtype=layout.dtype).view(shape)
        else:
            self.kv_cache = torch.zeros(shape, dtype=layout.dtype, device=self.device)

    @property
    def capacity_bytes(self) -> int:
        return self.num_blocks * self.layout.page_size_bytes

    def k_cache(self, layer: int) -> torch.Tensor:
        """`[num_blocks, num_kv_heads, block_size, head_dim]` keys of one layer (a strided view)."""
        return self.kv_cache[:, layer, 0]

    def v_cache(self, layer: int) -> torch.Tensor:
        """`[num_blocks, num_kv_heads, block_size, head_dim]` values of one layer (a strided view)."""
        return self.kv_cache[:, layer, 1]

    def block_pages(self, block_ids: Sequence[int]) -> list[torch.Tensor]:
        """Each block in the pool, a contiguous `layout.block_shape` view: reading an object into it
        places the block."""
        for block_id in block_ids:
            if not 0 <= block_id < self.num_blocks:
                raise ValueError(f"block ids must be in [0, {self.num_blocks}), got {list(block_ids)}")
        return [self.kv_cache[block_id] for block_id in block_ids]

    def _ids(self, block_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(list(block_ids), dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_blocks):
            raise ValueError(f"block ids must be in [0, {self.num_blocks}), got {list(block_ids)}")
        return ids.to(self.device)

    def read_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        """Blocks packed off-device style: `[n, num_layers, 2, num_kv_heads, block_size, head_dim]`."""
        out = torch.empty((len(block_ids), *self.layout.block_shape), dtype=self.layout.dtype,
                          device=self.device)
        return ops.gather_blocks(self.kv_cache, self._ids(block_ids), out)

    def write_blocks(self, block_ids: Sequence[int], data: torch.Tensor) -> None:
        """The inverse of read_blocks; `data` may live on any device."""
        expected = (len(block_ids), *self.layout.block_shape)
        if tuple(data.shape) != expected or data.dtype != self.layout.dtype:
            raise ValueError(f"write_blocks expects {list(expected)} {self.layout.dtype}, "
                             f"got {list(data.shape)} {data.dtype}")
        ops.scatter_blocks(data.to(self.device, non_blocking=True), self._ids(block_ids), self.kv_cache)
