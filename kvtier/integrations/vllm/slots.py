"""Which host slot holds which vLLM block, and in what state: the manager's bookkeeping, no I/O.

A slot is FILLING while the folder tier reads a block into it, STORING while vLLM's worker copies a
block into it, READY when it may be loaded. Pins protect a slot from reuse: one per load vLLM has
prepared and not completed, and one while the block is being written to the folder. Free slots are
used first, then the least recently used READY slot without a pin.
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


class SlotState(enum.Enum):
    FILLING = "filling"
    STORING = "storing"
    READY = "ready"


@dataclass(slots=True)
class Slot:
    index: int
    state: SlotState
    pins: int = 0


class SlotTable:
    """Keys (vLLM's offload keys, bytes) to slots of a fixed-size slab. Not thread-safe: callers lock."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._slots: OrderedDict[bytes, Slot] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: bytes) -> bool:
        return key in self._slots

    def get(self, key: bytes) -> Slot | None:
        return self._slots.get(key)

    def touch(self, key: bytes) -> None:
        if key in self._slots:
            self._slots.move_to_end(key)

    def count(self, state: SlotState) -> int:
        return sum(slot.state is state for slot in self._slots.values())

    def claim(self, keys: Sequence[bytes], state: SlotState) -> tuple[list[Slot], list[bytes]]:
        """Slots for as many of `keys` (new, in order) as room allows; returns them and the keys evicted."""
        claimed: list[Slot] = []
        evicted: list[bytes] = []
        victims = (key for key, slot in list(self._slots.items()) if slot.state is SlotState.READY and not slot.pins)
        for key in keys:
            if key in self._slots:
                raise KeyError(f"{key.hex()} already holds slot {self._slots[key].index}")
            if not self._free:
                victim = next(victims, None)
                if victim is None:
                    break
                self._free.append(self._slots.pop(victim).index)
                evicted.append(victim)
            slot = Slot(self._free.pop(), state)
            self._slots[key] = slot
            claimed.append(slot)
        return claimed, evicted

    def set_state(self, key: bytes, state: SlotState) -> None:
        self._slots[key].state = state
        self._slots.move_to_end(key)

    def pin(self, key: bytes) -> Slot:
        slot = self._slots[key]
        slot.pins += 1
        return slot

    def unpin(self, key: bytes) -> None:
        slot = self._slots.get(key)
        if slot is None or slot.pins == 0:
            raise RuntimeError(f"unpin of {key.hex()}: not pinned (a bookkeeping bug)")
        slot.pins -= 1

    def release(self, key: bytes) -> None:
        """Forget a key and free its slot (a failed store or fill); pinned slots are a caller bug."""
        slot = self._slots.pop(key)
        if slot.pins:
            self._slots[key] = slot
            raise RuntimeError(f"release of {key.hex()} with {slot.pins} pins")
        self._free.append(slot.index)

    def clear_unpinned(self) -> list[bytes]:
        """Drop every READY slot without a pin (vLLM's reset_cache); returns the keys dropped."""
        dropped = [key for key, slot in self._slots.items() if slot.state is SlotState.READY and not slot.pins]
        for key in dropped:
            self._free.append(self._slots.pop(key).index)
        return dropped
