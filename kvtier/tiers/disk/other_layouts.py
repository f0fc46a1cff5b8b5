"""OtherLayouts: a read-only tier that serves this layout's part of a block from the objects that other
parallel layouts wrote into the same folder tier (see shard_names.py for where each layout's go).

A rank at TP=2 that misses its own shard of a block can still find the block whole at the folder's
root (written at TP=1), or as two TP=4 shards, or as a PP stage's layers: it picks objects whose
layers x KV heads cover its own, and reads from each only the bytes of the heads and layers it
needs. In a raw object each (layer, K|V) holds its KV heads contiguously, so those bytes are one
run per (layer, K|V), read straight into the output block and verified against the header's
per-segment checksums; nothing unverified is served. An object without them (zstd) is read whole.

Folders that belong to other layouts are never written, pinned or cleaned here: a damaged object
is a miss (and counted), and its own layout's store deals with it when it reads it.
"""
from __future__ import annotations

import logging
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass

import torch
import xxhash

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.disk.folder import SUBDIR_FLAGS, TierFolder
from kvtier.tiers.disk.names import object_name
from kvtier.tiers.disk.pyfileio import READ_FLAGS
from kvtier.tiers.disk.shard_names import list_shard_folders
from kvtier.tiers.format import FIXED_HEADER_BYTES, BlockHeader, check_identity, decode_header, header_length
from kvtier.tiers.format.codecs import decode_payload, tensor_bytes
from kvtier.tiers.format.verify import payload_view
from kvtier.types import BlockHash, TierKind

logger = logging.getLogger(__name__)

LIST_INTERVAL_S = 1.0
"""How often the shard folders are listed again at most (another layout may start writing any time)."""
MAX_REMEMBERED_COVERS = 4096  # covers found by `contains`, kept for the `get` that follows


@dataclass(frozen=True, slots=True)
class _Source:
    """A folder of objects that hold the model's `layers` x `heads` (KV heads)."""

    folder: TierFolder
    layers: tuple[int, int]
    heads: tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Piece:
    """Read `layers` x `heads` of a block from `source`'s object."""

    source: _Source
    layers: tuple[int, int]
    heads: tuple[int, int]


class OtherLayouts(TierStore):
    """This layout's part of blocks, assembled from other layouts' objects under `root`.

    Args:
        layout: the part to serve (a rank's layers and KV heads).
        root: the folder tier's path as configured (the whole model's objects are there, each
            layout's shards under root/shards/).
        model_layout: the whole model's layout (what an object at the root holds).
        own: this layout's own folder (already a tier of the cache: not read here again).
        kind: the kind of tier its hits count as.
    """

    def __init__(self, layout: KVLayout, root: str, model_layout: KVLayout, own: str,
                 kind: TierKind = TierKind.DISK) -> None:
        super().__init__(layout)
        self.kind = kind
        self.root = os.path.abspath(root)
        self.own = os.path.abspath(own)
        self.model_layout = model_layout
        self._sources: dict[str, _Source] = {}
        self._listed_at = -LIST_INTERVAL_S
        self._covers: dict[BlockHash, list[_Piece]] = {}
        self._lock = threading.Lock()

    @property
    def capacity_bytes(self) -> int:
        return 0

    @property
    def used_bytes(self) -> int:
        return 0

    @property
    def num_blocks(self) -> int:
        return 0

    def contains(self, block_hash: BlockHash) -> bool:
        cover = self._cover(block_hash)
        if cover is None:
            return False
        with self._lock:
            if len(self._covers) >= MAX_REMEMBERED_COVERS:
                self._covers.clear()
            self._covers[block_hash] = cover
        return True

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        raise TypeError("OtherLayouts is read-only: blocks are written to the layout's own tiers")

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The block's part this layout holds, read from the objects that cover it, or None."""
        if out is not None:
            self.check_block(out, "get")
        with self._lock:
            cover = self._covers.pop(key.block_hash, None)
        cover = cover if cover is not None else self._cover(key.block_hash)
        if cover is None:
            return self._count("misses")
        usable = out is not None and out.is_cpu and out.is_contiguous()
        target = out if usable and out is not None else torch.empty(self.layout.block_shape, dtype=self.layout.dtype)
        moved = 0
        try:
            for piece in cover:
                moved += self._read_piece(piece, key, target)
        except FileNotFoundError:
            return self._count("misses")
        except FormatError as exc:
            logger.warning("an object of another layout under %s failed verification (%s); a miss", self.root, exc)
            return self._count("corrupt")
        except OSError as exc:
            logger.warning("reading an object of another layout under %s failed: %s", self.root, exc)
            return self._count("io_errors")
        with self._lock:
            self.stats.hits += 1
            self.stats.bytes_read += moved
        if out is not None and target is not out:
            out.copy_(target)
            return out
        return target

    def pin(self, block_hash: BlockHash) -> None:
        """Nothing to pin: this tier never evicts (another layout's store may remove a file: a miss)."""

    def unpin(self, block_hash: BlockHash) -> None:
        pass

    def evict(self, block_hash: BlockHash) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            for source in self._sources.values():
                source.folder.close()
            self._sources = {}

    def _count(self, what: str) -> torch.Tensor | None:
        """A miss, counted (and why, unless it is a plain miss): what `get` returns for it."""
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)
            if what != "misses":
                self.stats.misses += 1
        return None

    def _cover(self, block_hash: BlockHash) -> list[_Piece] | None:
        """Pieces of objects present for `block_hash` whose layers x heads cover this layout's, or None.

        NOTE: greedy, largest overlap first: the layouts a folder holds tile the model, so one
        layout's objects cover alone and the first pick is usually the whole of what is needed.
        """
        (l0, l1), (h0, h1) = self.layout.layer_range, self.layout.head_range
        missing = {(layer, head) for layer in range(l0, l1) for head in range(h0, h1)}
        fanout, name = object_name(block_hash)
        pieces = []
        for source in self._candidates():
            layers = (max(l0, source.layers[0]), min(l1, source.layers[1]))
            heads = (max(h0, source.heads[0]), min(h1, source.heads[1]))
            cells = {(layer, head) for layer in range(*layers) for head in range(*heads)} & missing
            if not cells:
                continue
            st = source.folder.lstat(fanout, name)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            pieces.append(_Piece(source, layers, heads))
            missing -= cells
            if not missing:
                return pieces
        return None

    def _candidates(self) -> list[_Source]:
        """Every other layout's folder that overlaps this layout, largest overlap first."""
        now = time.monotonic()
        with self._lock:
            if now - self._listed_at >= LIST_INTERVAL_S:
                self._listed_at = now
                self._relist()
            sources = list(self._sources.values())
        (l0, l1), (h0, h1) = self.layout.layer_range, self.layout.head_range

        def overlap(s: _Source) -> int:
            layers = max(0, min(l1, s.layers[1]) - max(l0, s.layers[0]))
            return layers * max(0, min(h1, s.heads[1]) - max(h0, s.heads[0]))

        return sorted((s for s in sources if overlap(s)), key=overlap, reverse=True)

    def _relist(self) -> None:
        """Open folders that appeared since the last listing (called under the lock)."""
        found = {self.root: ((0, self.model_layout.num_layers), (0, self.model_layout.num_kv_heads))}
        for path, parsed in list_shard_folders(self.root):
            if parsed.layers[1] <= self.model_layout.num_layers and parsed.heads[1] <= self.model_layout.num_kv_heads:
                found[path] = (parsed.layers, parsed.heads)
        for path, (layers, heads) in found.items():
            if path == self.own or path in self._sources:
                continue
            try:
                folder = TierFolder(path, 0o700, existing=True)
            except OSError:
                continue
            self._sources[path] = _Source(folder, layers, heads)

    def _read_piece(self, piece: _Piece, key: BlockKey, out: torch.Tensor) -> int:
        """Read `piece` of `key`'s object into `out` (this layout's block); returns the bytes read.

        Raises:
            FileNotFoundError: the object went away. OSError: the read failed.
            FormatError: the object is not `key`'s block of that folder's layers and heads, or is damaged.
        """
        source = piece.source
        fanout, name = object_name(key.block_hash)
        dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=source.folder.fd)
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError("not a regular file at an object's name")
            header = decode_header(os.pread(fd, header_length(os.pread(fd, FIXED_HEADER_BYTES, 0)), 0))
            self._check_header(header, key, source, st.st_size)
            if header.segment_checksums:
                return header.header_len + self._read_segments(fd, header, piece, out)
            self._read_whole(fd, header, piece, out)
            return header.object_bytes
        finally:
            os.close(fd)

    def _check_header(self, header: BlockHeader, key: BlockKey, source: _Source, size: int) -> None:
        check_identity(header, key, None)
        held = ((header.first_layer, header.first_layer + header.num_layers), (header.head_start, header.head_end))
        if held != (source.layers, source.heads):
            raise FormatError(f"object holds layers {list(held[0])} and KV heads {list(held[1])}, its folder "
                              f"says {list(source.layers)} and {list(source.heads)}")
        stored = (header.block_size, header.head_dim, header.dtype)
        wanted = (self.layout.block_size, self.layout.head_dim, self.layout.dtype)
        if stored != wanted:
            raise FormatError(f"object of (block_size, head_dim, dtype)={stored}, this layout is {wanted}")
        if header.object_bytes != size:
            raise FormatError(f"object is {size} bytes, its header announces {header.object_bytes}")

    def _read_segments(self, fd: int, header: BlockHeader, piece: _Piece, out: torch.Tensor) -> int:
        """Each (layer, K|V) run of the piece's heads, read into place and checked segment by segment."""
        seg, heads = header.segment_bytes, header.head_end - header.head_start
        table = struct.unpack(f"<{len(header.segment_checksums) // 8}Q", header.segment_checksums)
        (l0, _), (h0, _) = self.layout.layer_range, self.layout.head_range
        first_head, count = piece.heads[0] - header.head_start, piece.heads[1] - piece.heads[0]
        moved = 0
        for layer in range(*piece.layers):
            for kv in (0, 1):
                index = ((layer - header.first_layer) * 2 + kv) * heads + first_head
                run = tensor_bytes(out[layer - l0, kv, piece.heads[0] - h0:piece.heads[1] - h0])
                if os.preadv(fd, [run], header.header_len + index * seg) != run.nbytes:
                    raise FormatError("object is shorter than its header announces")
                for i in range(count):
                    if xxhash.xxh3_64_intdigest(run[i * seg:(i + 1) * seg]) != table[index + i]:
                        raise FormatError(f"segment checksum mismatch at layer {layer}, {'KV'[kv]}, KV head "
                                          f"{piece.heads[0] + i}: the payload is corrupt")
                moved += run.nbytes
        return moved

    def _read_whole(self, fd: int, header: BlockHeader, piece: _Piece, out: torch.Tensor) -> None:
        """An object without segment checksums (zstd): read and verify all of it, then take the piece."""
        buf = bytearray(header.object_bytes)
        if os.preadv(fd, [buf], 0) != header.object_bytes:
            raise FormatError("object is shorter than its header announces")
        block = decode_payload(payload_view(header, buf), header.codec, header.dtype, header.block_shape)
        (l0, _), (h0, _) = self.layout.layer_range, self.layout.head_range
        (a, b), (c, d) = piece.layers, piece.heads
        out[a - l0:b - l0, :, c - h0:d - h0].copy_(
            block[a - header.first_layer:b - header.first_layer, :, c - header.head_start:d - header.head_start])
