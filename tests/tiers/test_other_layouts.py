"""OtherLayouts: a shard of a block served from the objects other parallel layouts wrote, reading only
the bytes of its layers and heads, each verified; damage, links and other layouts' rules."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from kvtier.config import DiskTierConfig, KVLayout
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk.other_layouts import OtherLayouts
from kvtier.tiers.disk.shard_names import parse_shard_folder_name, shard_folder_name
from kvtier.tiers.format import decode_header
from tests.tiers.disk_support import make_block, make_key, same_bits

WHOLE = KVLayout(num_layers=4, num_kv_heads=4, head_dim=8, block_size=4, dtype=torch.float16)


def shard(layers: tuple[int, int], heads: tuple[int, int]) -> KVLayout:
    return dataclasses.replace(WHOLE, num_layers=layers[1] - layers[0], num_kv_heads=heads[1] - heads[0],
                               first_layer=layers[0], first_kv_head=heads[0])


def write(root: Path, layout: KVLayout, block: torch.Tensor, codec: str = "raw") -> Path:
    """`layout`'s part of `block` (a whole block of WHOLE) stored as its own layout would store it."""
    (a, b), (c, d) = layout.layer_range, layout.head_range
    path = root if layout == WHOLE else root / "shards" / shard_folder_name((a, b), (c, d))
    store = DiskStore(layout, DiskTierConfig(path=str(path), capacity_bytes=1 << 24, fsync=False, codec=codec))
    store.put(make_key(1), block[a:b, :, c:d].contiguous())
    return Path(store.path_of(make_key(1).block_hash))


def reader(root: Path, layout: KVLayout) -> OtherLayouts:
    (a, b), (c, d) = layout.layer_range, layout.head_range
    own = root if layout == WHOLE else root / "shards" / shard_folder_name((a, b), (c, d))
    return OtherLayouts(layout, str(root), WHOLE, str(own))


def test_a_head_range_of_a_whole_object_reads_only_its_bytes(tmp_path: Path) -> None:
    block = make_block(1, WHOLE)
    path = write(tmp_path, WHOLE, block)
    part = shard((0, 4), (1, 3))
    tier = reader(tmp_path, part)
    assert tier.contains(make_key(1).block_hash)
    assert same_bits(tier.get(make_key(1)), block[:, :, 1:3].contiguous())
    header_len = decode_header(path.read_bytes()).header_len
    assert tier.stats.bytes_read == header_len + part.page_size_bytes  # half the payload, and the header


def test_a_layout_is_assembled_from_the_shards_of_another(tmp_path: Path) -> None:
    block = make_block(1, WHOLE)
    for heads in ((0, 2), (2, 4)):  # written at TP=2
        write(tmp_path, shard((0, 4), heads), block)
    whole, stage = reader(tmp_path, WHOLE), reader(tmp_path, shard((2, 4), (0, 4)))  # read at TP=1, at PP stage 1
    assert same_bits(whole.get(make_key(1)), block)
    assert same_bits(stage.get(make_key(1)), block[2:4].contiguous())
    assert reader(tmp_path, shard((0, 4), (1, 2))).get(make_key(1)) is not None  # at TP=4


def test_damage_in_the_bytes_read_is_a_miss_and_damage_elsewhere_is_not_read(tmp_path: Path) -> None:
    block = make_block(1, WHOLE)
    path = write(tmp_path, WHOLE, block)
    data = bytearray(path.read_bytes())
    header_len, segment = decode_header(data).header_len, 4 * 8 * 2
    data[header_len + 3 * segment + 5] ^= 0x10  # layer 0, K, head 3
    path.write_bytes(bytes(data))
    assert same_bits(reader(tmp_path, shard((0, 4), (0, 2))).get(make_key(1)), block[:, :, 0:2].contiguous())
    damaged = reader(tmp_path, shard((0, 4), (2, 4)))
    assert damaged.get(make_key(1)) is None and damaged.stats.corrupt == 1
    assert path.exists()  # another layout's file: its own store deals with it


def test_a_compressed_object_is_read_whole_and_sliced(tmp_path: Path) -> None:
    block = make_block(1, WHOLE)
    path = write(tmp_path, WHOLE, block, codec="zstd")
    tier = reader(tmp_path, shard((1, 3), (0, 1)))
    assert same_bits(tier.get(make_key(1)), block[1:3, :, 0:1].contiguous())
    assert tier.stats.bytes_read == path.stat().st_size


def test_an_object_in_the_wrong_folder_and_links_are_not_served(tmp_path: Path) -> None:
    block = make_block(1, WHOLE)
    source = write(tmp_path / "elsewhere", shard((0, 4), (0, 2)), block)
    wrong = tmp_path / "shards" / "layers-0-4.heads-2-4"  # claims heads 2-3, holds 0-1
    (wrong / source.parent.name).mkdir(parents=True)
    os.link(source, wrong / source.parent.name / source.name)
    tier = reader(tmp_path, shard((0, 4), (2, 3)))
    assert tier.get(make_key(1)) is None and tier.stats.corrupt == 1
    os.symlink(source.parent.parent, tmp_path / "shards" / "layers-0-4.heads-0-2")
    assert not reader(tmp_path, shard((0, 4), (0, 2))).contains(make_key(1).block_hash)


def test_shard_folder_names_parse_strictly() -> None:
    assert parse_shard_folder_name("layers-0-15.heads-1-2.replica-1") == ((0, 15), (1, 2), 1)
    for bad in ("layers-0-15.heads-1-2.replica-0", "layers-00-15.heads-1-2", "layers-3-3.heads-0-1",
                "layers-0-15.heads-1-2 ", "layers-0-15.heads-1-2/..", "layers-0-15"):
        assert parse_shard_folder_name(bad) is None
