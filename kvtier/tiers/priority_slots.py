"""PrioritySlots: an asyncio semaphore with two classes of waiters, reads served before writes.

Prefetch reads stall the model when they queue behind spill writes; writes only need to finish
eventually. A freed slot therefore goes to the oldest waiting read, else to the oldest write.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

Kind = Literal["read", "write"]


class PrioritySlots:
    """At most `limit` holders at once; waiting reads go first, FIFO within a kind."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"PrioritySlots limit must be >= 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._waiters: dict[Kind, deque[asyncio.Future[None]]] = {"read": deque(), "write": deque()}

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self._waiters.values())

    @asynccontextmanager
    async def slot(self, kind: Kind) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`."""
        await self._acquire(kind)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, kind: Kind) -> None:
        if self._free > 0 and not self.num_waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[kind].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled: pass it on
            else:
                self._waiters[kind].remove(waiter)
            raise

    def _release(self) -> None:
        for kind in ("read", "write"):
            queue = self._waiters[kind]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot moves to the waiter without being freed
                    return
        self._free += 1
