"""Helpers for the disk-tier tests: tiny layouts, keys, blocks, stores, and a real tiny tmpfs."""
from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig, KVLayout, SharedTierConfig
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk.fileio import native_built
from kvtier.types import BlockHash, Namespace

needs_native = pytest.mark.skipif(not native_built(), reason="kvtier.tiers.disk._fileio is not built")
TWINS = [pytest.param(True, marks=needs_native, id="compiled"), pytest.param(False, id="python")]

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float16)
NAMESPACE = Namespace(hashlib.sha256(b"model+tenant").digest())


def make_key(i: int, namespace: Namespace = NAMESPACE) -> BlockKey:
    return BlockKey(namespace, BlockHash(hashlib.sha256(namespace + i.to_bytes(8, "little")).digest()),
                    tuple(range(i, i + LAYOUT.block_size)))


def make_block(i: int, layout: KVLayout = LAYOUT) -> torch.Tensor:
    gen = torch.Generator().manual_seed(i)
    return torch.randn(layout.block_shape, generator=gen).to(layout.dtype)


def same_bits(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def object_bytes(layout: KVLayout = LAYOUT) -> int:
    """File size of one raw object of `layout` (header of block_size token ids + payload)."""
    from kvtier.tiers.format import header_bytes_for, num_segments
    return header_bytes_for(layout.block_size, num_segments(layout)) + layout.page_size_bytes


def open_store(path: Path, num_blocks: int = 100, *, shared: bool = False, **options: object) -> DiskStore:
    """A store of LAYOUT holding `num_blocks` objects; `shared` opens the folder as a SharedTierConfig."""
    config_class = SharedTierConfig if shared else DiskTierConfig
    config = config_class(path=str(path), capacity_bytes=num_blocks * object_bytes(),
                          fsync=bool(options.pop("fsync", False)), **options)  # type: ignore[arg-type]
    return DiskStore(LAYOUT, config)


def can_link_unnamed(folder: Path) -> bool:
    """Whether a store in `folder` publishes O_TMPFILE inodes (the filesystem and sandbox allow linking them)."""
    return open_store(folder / ".probe-store").publishes_unnamed


def open_fds() -> int:
    """Descriptors this process holds (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*.kvb"))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs with 272 inodes (the root, 256 fan-out folders, 15 files), mounted for the
    test (root only), unmounted afterwards."""
    mount_point = tmp_path / "tiny"
    tmpfs_mount(mount_point, "size=2m,nr_inodes=272")
    try:
        yield mount_point
    finally:
        tmpfs_unmount(mount_point)


def tmpfs_mount(mount_point: Path, options: str, fs_type: str = "tmpfs") -> None:
    """Mount a tmpfs (or another memory filesystem: ramfs) with `options` (root only); skips the test
    where that is impossible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"mounting a {fs_type} needs root")
    mount_point.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", fs_type, "-o", options, fs_type, str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {fs_type} here: {done.stderr.strip()}")


def tmpfs_unmount(mount_point: Path) -> None:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def killed_writer(root: str, num_done: int, ready: object, tmpfile: bool) -> None:
    """Child process: store `num_done` blocks, then stall half way through the next write until killed."""
    import time

    from kvtier.tiers.disk import pyfileio

    store = open_store(Path(root), tmpfile=tmpfile, native_io=False)  # the stall is injected into the Python twin
    for i in range(num_done):
        store.put(make_key(i), make_block(i))
    real_writev = os.writev

    def half_then_stall(fd: int, buffers: list[memoryview]) -> int:
        written = real_writev(fd, [buffers[0], buffers[1][:len(buffers[1]) // 2]])
        ready.set()  # type: ignore[attr-defined]
        while True:  # wait for SIGKILL with a torn temporary file on disk
            time.sleep(1)
        return written

    pyfileio.os.writev = half_then_stall  # type: ignore[assignment]
    store.put(make_key(num_done), make_block(num_done))


BIG_LAYOUT = KVLayout(num_layers=32, num_kv_heads=16, head_dim=128, block_size=16, dtype=torch.float16)  # 4 MiB


def big_key(i: int) -> BlockKey:
    return make_key(i)._replace(token_ids=tuple(range(BIG_LAYOUT.block_size)))


def writer_until_killed(root: str, tmpfile: bool) -> None:
    """Child process: put 4 MiB blocks with fsync through the default (compiled) routine until killed."""
    config = DiskTierConfig(path=root, capacity_bytes=1 << 40, fsync=True, tmpfile=tmpfile)
    store = DiskStore(BIG_LAYOUT, config)
    i = 0
    while True:
        store.put(big_key(i), make_block(i, BIG_LAYOUT))
        i += 1


def files_open_under(pid: int, root: str) -> list[str]:
    """What process `pid` has open under `root` (Linux: /proc/PID/fd); an O_TMPFILE inode reads
    as `ROOT/ab/#INODE (deleted)`."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith(root + "/"):
            found.append(target)
    return found


def shared_worker(root: str, seed: int, num_keys: int, num_ops: int, capacity_blocks: int) -> dict[str, int]:
    """Child process: random puts and gets of overlapping keys in a shared folder; counts outcomes."""
    import random

    rng = random.Random(seed)
    store = open_store(Path(root), num_blocks=capacity_blocks, shared=True)
    blocks = [make_block(i) for i in range(num_keys)]
    counts = {"hits": 0, "misses": 0, "wrong": 0, "puts": 0}
    for _ in range(num_ops):
        i = rng.randrange(num_keys)
        if rng.random() < 0.5:
            store.put(make_key(i), blocks[i])
            counts["puts"] += 1
            continue
        got = store.get(make_key(i))
        if got is None:
            counts["misses"] += 1
        elif same_bits(got, blocks[i]):
            counts["hits"] += 1
        else:
            counts["wrong"] += 1
    counts["corrupt"] = store.stats.corrupt
    return counts
