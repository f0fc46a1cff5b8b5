"""OnloadHandle: what a scheduler holds while a request's prefix is read back from lower tiers."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, wait
from typing import NamedTuple

import torch

from kvtier.tiers.base import BlockKey, TierStore


class LowerHit(NamedTuple):
    """A prefix block found below the device: pinned in `tier`, or still on its way there.

    `data` is set for a block whose spill to `tier` is in flight: the engine's own copy, served
    as is (nothing to pin or read); and for a block the device pool holds further along a prompt
    whose earlier blocks it does not (`tier` None): its pages, copied at once.
    """

    tier: TierStore | None
    key: BlockKey
    data: torch.Tensor | None = None


class OnloadHandle:
    """One request's prefix blocks, in prefix order: a read future each (the engine's workers), or the
    blocks themselves when the caller's thread read them before the handle was made."""

    def __init__(self, found: list[LowerHit], futures: list[Future[torch.Tensor | None]],
                 landing: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 results: list[torch.Tensor | None] | None = None) -> None:
        self.found = found
        self.futures = futures  # one per block, read in the engine's workers; none when `results` is given
        self.results = results  # the blocks, read already in the caller's thread (None: a miss)
        self.landing = landing  # [>= len(found), *block_shape] or a tensor per block: block i lands in landing[i]

    @property
    def num_blocks(self) -> int:
        return len(self.found)

    def done(self) -> bool:
        """True when every read has finished (or was cancelled): `wait` will not block."""
        return all(f.done() for f in self.futures)

    def wait(self, timeout_s: float | None = None) -> list[torch.Tensor]:
        """The leading run of blocks read successfully; a miss or failure ends the run.

        Blocks after the first miss are not needed (the prefix is recomputed from there), so their
        reads are cancelled when not yet started.
        """
        loaded: list[torch.Tensor] = []
        if self.results is not None:
            for block in self.results:
                if block is None:
                    break
                loaded.append(block)
            return loaded
        for future in self.futures:
            try:
                data = future.result(timeout=timeout_s)
            except Exception:  # cancelled, timed out, or a fault the engine counted: a miss (invariant 4)
                data = None
            if data is None:
                self.cancel()
                break
            loaded.append(data)
        return loaded

    def cancel(self) -> None:
        """Cancel reads not yet started; their pins are released at once."""
        for future in self.futures:
            future.cancel()

    def settle(self) -> None:
        """Cancel reads not yet started and wait for the running ones to end, so nothing writes into
        the landing any more (whatever each read's outcome)."""
        self.cancel()
        wait(self.futures)
