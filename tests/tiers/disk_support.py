"""Helpers for the disk-tier tests: tiny layouts, keys, blocks, stores, and a real tiny tmpfs."""
from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig, KVLayout
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore
from kvtier.types import BlockHash, Namespace

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
    from kvtier.tiers.format import header_bytes_for
    return header_bytes_for(layout.block_size) + layout.page_size_bytes


def open_store(path: Path, num_blocks: int = 100, **options: object) -> DiskStore:
    config = DiskTierConfig(path=str(path), capacity_bytes=num_blocks * object_bytes(),
                            fsync=bool(options.pop("fsync", False)), **options)  # type: ignore[arg-type]
    return DiskStore(LAYOUT, config)


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/??/*.kvb"))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
