"""The floor of a restore: plain reads of the same object files into preallocated memory, on as
many threads as the transfer engine has workers, with no parsing, checking or copying after.

A restore through the disk tier also checks each object's header and checksum and places the
blocks in the device pool; its time over this floor is what kvtier adds to the storage itself.
"""
from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from kvtier.cache import TieredKVCache
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.format.codecs import tensor_bytes
from kvtier.types import Namespace


def restored_paths(cache: TieredKVCache, namespace: Namespace, prompt: list[int]) -> list[str]:
    """The disk objects a prompt's leading blocks would be read from (up to the first block no disk
    tier holds), as the cache finds them after a restart."""
    disks = [t for t in cache.tiers if isinstance(t, DiskStore)]
    paths = []
    hashes = cache.manager.hash_tokens(prompt, namespace)
    for block_hash in hashes[:cache.manager.max_hit_blocks(len(prompt))]:
        disk = next((d for d in disks if d.contains(block_hash)), None)
        if disk is None:
            break
        paths.append(disk.path_of(block_hash))
    return paths


def plain_read_s(paths: list[str], num_threads: int) -> float:
    """Seconds to read every file whole into its own slice of one buffer, `num_threads` at a time.

    The buffer is touched before the clock starts, as the cache's landing buffers are when it opens
    (TransferConfig.landing_bytes): neither side pays page faults.
    """
    sizes = [os.stat(p).st_size for p in paths]
    memory = torch.zeros(sum(sizes), dtype=torch.uint8)  # NOTE: zeros, not empty: every page faulted in now
    offsets = [0, *itertools.accumulate(sizes)]
    flat = tensor_bytes(memory)
    buffers = [flat[offsets[i]:offsets[i + 1]] for i in range(len(paths))]

    def read(index: int) -> None:
        fd = os.open(paths[index], os.O_RDONLY)
        try:
            view, done = memoryview(buffers[index]), 0
            while done < len(view):
                got = os.readv(fd, [view[done:]])
                if got == 0:
                    raise OSError(f"{paths[index]} ended after {done} of {len(view)} bytes")
                done += got
        finally:
            os.close(fd)

    with ThreadPoolExecutor(num_threads, thread_name_prefix="kvtier-floor") as pool:
        start = time.perf_counter()
        list(pool.map(read, range(len(paths))))
        return time.perf_counter() - start
