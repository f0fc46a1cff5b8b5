"""Reusable landing buffers for onloads: the host memory a request's lower-tier blocks are read into
before they are placed on the device.

A fresh buffer costs its page faults on first touch, about as long as reading the same bytes from
the page cache (a 189 MB restore: 80 ms of faults against 25 ms of reads on this CPU), so a few
buffers are kept and reused, smallest fit first. On CUDA they are pinned, and a buffer is handed
out again only once the host-to-device copy from it has finished (an event per buffer).
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from kvtier.config import KVLayout


class LandingBuffers:
    def __init__(self, layout: KVLayout, *, pin: bool, prefault_blocks: int = 0, keep: int = 2,
                 min_blocks: int = 64) -> None:
        """`prefault_blocks`: one buffer of that many blocks is allocated and touched now."""
        self.layout, self.pin, self.keep, self.min_blocks = layout, pin, keep, min_blocks
        self._free: list[tuple[torch.Tensor, Any]] = []  # (buffer, the CUDA event of its last copy out)
        self._lock = threading.Lock()
        if prefault_blocks > 0:
            self._free.append((self._new(prefault_blocks).zero_(), None))

    def take(self, num_blocks: int) -> torch.Tensor:
        """A buffer of at least `num_blocks` blocks `[capacity, *block_shape]`, not in use elsewhere."""
        with self._lock:
            fits = [i for i, (buffer, _) in enumerate(self._free) if buffer.shape[0] >= num_blocks]
            if fits:  # NOTE: by index: list.remove would compare tensors
                buffer, copied = self._free.pop(min(fits, key=lambda i: self._free[i][0].shape[0]))
                if copied is not None:
                    copied.synchronize()
                return buffer
        return self._new(max(num_blocks, self.min_blocks))

    def _new(self, capacity: int) -> torch.Tensor:
        return torch.empty((capacity, *self.layout.block_shape), dtype=self.layout.dtype, pin_memory=self.pin)

    def give_back(self, buffer: torch.Tensor, device: torch.device) -> None:
        """Return a buffer whose reads have all ended and whose blocks were copied to `device`."""
        copied = None
        if device.type == "cuda":
            copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            copied.record(torch.cuda.current_stream(device))
        with self._lock:
            self._free.append((buffer, copied))
            if len(self._free) > self.keep:  # NOTE: drop the smallest; the largest serves any request
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i][0].shape[0]))
