"""In-memory index of a disk tier: object sizes in LRU order, pins, and bytes in use, reserved or quarantined.

Plain bookkeeping with no I/O and no lock of its own: DiskStore calls it under its lock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvtier.types import BlockHash


@dataclass(slots=True)
class IndexEntry:
    size: int  # bytes of the object file
    pins: int = 0
    header_checksum: int | None = None  # of the header written or last verified; None: not known yet


class DiskIndex:
    """Objects by block hash, least recently used first; `used_bytes` counts files, reservations and
    the quarantine (damaged objects kept aside still take room on the disk)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[BlockHash, IndexEntry] = OrderedDict()
        self._file_bytes = 0
        self.reserved_bytes = 0  # space promised to writes in flight
        self.quarantine_bytes = 0  # damaged objects moved aside (see discard.py)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def file_bytes(self) -> int:
        return self._file_bytes

    @property
    def used_bytes(self) -> int:
        return self._file_bytes + self.reserved_bytes + self.quarantine_bytes

    def get(self, block_hash: BlockHash) -> IndexEntry | None:
        return self._entries.get(block_hash)

    def add(self, block_hash: BlockHash, size: int, header_checksum: int | None = None) -> None:
        """Record an object as most recently used (replacing any older record of it)."""
        old = self._entries.pop(block_hash, None)
        if old is not None:
            self._file_bytes -= old.size
        self._entries[block_hash] = IndexEntry(size, old.pins if old is not None else 0, header_checksum)
        self._file_bytes += size

    def touch(self, block_hash: BlockHash, header_checksum: int | None = None) -> None:
        """Mark an object most recently used; a verified read also records its header checksum."""
        entry = self._entries.get(block_hash)
        if entry is not None:
            self._entries.move_to_end(block_hash)
            if header_checksum is not None:
                entry.header_checksum = header_checksum

    def remove(self, block_hash: BlockHash) -> IndexEntry | None:
        entry = self._entries.pop(block_hash, None)
        if entry is not None:
            self._file_bytes -= entry.size
        return entry

    def pin(self, block_hash: BlockHash) -> None:
        entry = self._entries.get(block_hash)
        if entry is None:
            raise KeyError(f"pin of block {block_hash.hex()[:16]}… which is not in this disk tier")
        entry.pins += 1

    def unpin(self, block_hash: BlockHash) -> None:
        entry = self._entries.get(block_hash)
        if entry is None or entry.pins == 0:
            raise RuntimeError(f"unpin of block {block_hash.hex()[:16]}… which is not pinned here")
        entry.pins -= 1

    def is_pinned(self, block_hash: BlockHash) -> bool:
        entry = self._entries.get(block_hash)
        return entry is not None and entry.pins > 0

    def evictable_bytes(self) -> int:
        return sum(e.size for e in self._entries.values() if e.pins == 0)

    def take_victims(self, need_bytes: int) -> list[tuple[BlockHash, int]] | None:
        """Remove and return least recently used unpinned objects freeing >= `need_bytes`.

        Returns None, removing nothing, when all unpinned objects together free too little.
        """
        victims: list[tuple[BlockHash, int]] = []
        freed = 0
        for block_hash, entry in self._entries.items():
            if freed >= need_bytes:
                break
            if entry.pins == 0:
                victims.append((block_hash, entry.size))
                freed += entry.size
        if freed < need_bytes:
            return None
        for block_hash, _ in victims:
            self.remove(block_hash)
        return victims
