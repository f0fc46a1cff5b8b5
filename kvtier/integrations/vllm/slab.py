"""The host tier both vLLM processes see: one file of fixed-size slots in shared memory.

vLLM runs the offloading manager in its scheduler process and the worker in another; the manager
reads and verifies objects from the folder into a slot, the worker copies a slot into vLLM's KV
(and back). A slot holds one block in kvtier's layout `[L, 2, H, N, D]`, so a slot is exactly the
payload of a kvtier object and the folder tier reads into it with no copy after the read.

The worker, which vLLM builds first and which knows the model's KV shape, makes the file and writes
the shape into its first page; the manager opens it, reads the shape, then unlinks the file (both
have it mapped: nothing is left in /dev/shm if either dies).
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import torch

from kvtier.config import KVLayout

HEADER_BYTES = 4096
_MAGIC = b"KVTSLAB1"
_HEAD = struct.Struct("<8sI")
_ALIGN = 4096


def slot_stride(slot_bytes: int) -> int:
    """Bytes between slots: a block rounded up to a page (aligned for O_DIRECT and vector copies)."""
    return -(-slot_bytes // _ALIGN) * _ALIGN


def slab_path(host_dir: str, engine_id: str, rank: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in engine_id)[:96]
    return os.path.join(host_dir, f"kvtier-vllm-{safe}-r{rank}.slab")


def _allocate(fd: int, size: int, path: str) -> None:
    """Reserve the file's pages now: a sparse file on a tmpfs too small for it (Docker's /dev/shm is
    64 MiB) would be a SIGBUS at the first copy, not an error."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        st = os.statvfs(os.path.dirname(path) or ".")
        os.unlink(path)
        raise ValueError(f"cannot reserve {size} bytes of host slots in {path} ({st.f_bavail * st.f_frsize} free "
                         f"there): {exc.strerror}; lower kv_connector_extra_config['kvtier']['host_bytes'], or "
                         f"give it another host_dir (in Docker: --shm-size)") from None


class HostSlab:
    """`num_slots` slots of `slot_bytes` in a shared file: made by the worker (`create=True`, which vLLM
    builds first), opened by the manager. A file already there is another engine's: refused."""

    def __init__(self, path: str, num_slots: int, slot_bytes: int, *, create: bool) -> None:
        if num_slots < 1:
            raise ValueError(f"the host tier holds no block: a block is {slot_bytes} bytes; raise "
                             f'kv_connector_extra_config["kvtier"]["host_bytes"] to at least that')
        self.path, self.num_slots, self.slot_bytes = path, num_slots, slot_bytes
        self.stride = slot_stride(slot_bytes)
        size = HEADER_BYTES + num_slots * self.stride
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise ValueError(f"{path} exists: another engine on this host has the same engine_id, or one that "
                             f"died left it; give each engine its own kv_transfer_config engine_id (vLLM's "
                             f"default is unique) or remove the file") from None
        except FileNotFoundError:
            raise ValueError(f"{path} is not there: the vLLM worker makes it before the scheduler opens it "
                             f"(a vLLM change of order? this plug-in supports vLLM 0.32)") from None
        try:
            have = os.fstat(fd).st_size
            if create:
                _allocate(fd, size, path)
            elif have != size:
                raise ValueError(f"{path} is {have} bytes, not the {size} this engine's settings make "
                                 f"({num_slots} slots of {self.stride})")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        self.layout: KVLayout | None = None

    def publish_layout(self, layout: KVLayout) -> None:
        """Worker side: record the block shape for the manager (and check it fills a slot exactly)."""
        if layout.page_size_bytes != self.slot_bytes:
            raise ValueError(f"a {layout} block is {layout.page_size_bytes} bytes but vLLM reports "
                             f"{self.slot_bytes} per block")
        body = json.dumps(layout.to_dict()).encode()
        self._map[_HEAD.size:_HEAD.size + len(body)] = body
        self._map[:_HEAD.size] = _HEAD.pack(_MAGIC, len(body))
        self.layout = layout

    def read_layout(self) -> KVLayout | None:
        """Manager side: the worker's layout, or None while it has not written one."""
        if self.layout is None:
            magic, length = _HEAD.unpack_from(self._map, 0)
            if magic != _MAGIC or not 0 < length <= HEADER_BYTES - _HEAD.size:
                return None
            layout = KVLayout.from_dict(json.loads(self._map[_HEAD.size:_HEAD.size + length]))
            if layout.page_size_bytes != self.slot_bytes:
                raise ValueError(f"slab {self.path}: layout {layout} does not fill {self.slot_bytes}-byte slots")
            self.layout = layout
        return self.layout

    def slot(self, index: int) -> torch.Tensor:
        """Slot `index` as one block of the layout (a view into shared memory)."""
        if self.layout is None:
            raise RuntimeError(f"slab {self.path} has no layout yet (the vLLM worker writes it at start)")
        if not 0 <= index < self.num_slots:
            raise IndexError(f"slot {index} outside [0, {self.num_slots})")
        start = HEADER_BYTES + index * self.stride
        view = self._bytes[start:start + self.slot_bytes].view(self.layout.dtype)
        return view.view(self.layout.block_shape)

    def prefault(self) -> None:
        """Touch every page now, at engine start: tmpfs allocates on first write, and a first read of a
        long prompt into untouched slots paid ~0.15 s of page faults (benches/bench_vllm.py, 44 MiB)."""
        self._bytes[HEADER_BYTES:].zero_()

    def unlink(self) -> None:
        """Remove the name; the mapping stays valid in every process that has it."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
