"""One rank's cache config, from the whole model's: its layout, its own folders, its share of the budgets.

Device and host tiers are counted in blocks, so every rank keeps the same number of blocks (a
rank's block is its shard of the model's). A folder tier's objects for a shard live under
`PATH/shards/layers-A-B.heads-C-D/` (tiers/disk/shard_names.py): a normal tier folder of their
own (budget, index, warm restart), so the shards of one block never share a name; the whole
model's objects stay at PATH itself. Other layouts' objects there are read through OtherLayouts.
Byte budgets are scaled by the shard's share of a block, so every rank's folder holds as many blocks.

Ranks that hold copies of the same KV heads (more tensor ranks than KV heads) keep a folder each
(`...heads-C-D.replica-R` past the first): a local tier folder has one writer, whose index and
budget are the truth, so two ranks must not share one.
"""
from __future__ import annotations

import dataclasses
import os

from kvtier.config import FolderTierConfig, KVLayout, KVTierConfig, RemoteTierConfig, SharedTierConfig
from kvtier.tiers.disk.other_layouts import OtherLayouts
from kvtier.tiers.disk.shard_names import SHARDS_DIR, shard_folder_name


def is_whole(layout: KVLayout, whole: KVLayout) -> bool:
    """Whether `layout` holds every layer and KV head of `whole` (the model's)."""
    return layout.layer_range == (0, whole.num_layers) and layout.head_range == (0, whole.num_kv_heads)


def shard_path(path: str, layout: KVLayout, whole: KVLayout, replica: int = 0) -> str:
    """Where a folder tier at `path` keeps the objects of shard `layout` of the model's `whole` layout
    (`replica`: which copy of those heads, see the module docstring)."""
    if is_whole(layout, whole) and not replica:
        return path
    return os.path.join(path, SHARDS_DIR, shard_folder_name(layout.layer_range, layout.head_range, replica))


def rank_cache_config(config: KVTierConfig, layout: KVLayout, replica: int = 0) -> KVTierConfig:
    """`config` (whose layout is the whole model's) for a rank that holds shard `layout` of it
    (copy `replica` of those KV heads).

    Raises:
        ValueError: `layout` is not a shard of `config.layout`.
    """
    whole = config.layout
    if (layout.head_dim, layout.block_size, layout.dtype) != (whole.head_dim, whole.block_size, whole.dtype) \
            or layout.layer_range[1] > whole.num_layers or layout.head_range[1] > whole.num_kv_heads:
        raise ValueError(f"{layout} is not a shard of {whole}")
    share = layout.page_size_bytes / whole.page_size_bytes
    tiers = tuple(
        dataclasses.replace(tier, path=shard_path(tier.path, layout, whole, replica),
                            capacity_bytes=max(1, int(tier.capacity_bytes * share + 0.5)))
        if isinstance(tier, FolderTierConfig) else
        dataclasses.replace(tier, shard=None if is_whole(layout, whole) and not replica else
                            shard_folder_name(layout.layer_range, layout.head_range, replica),
                            capacity_bytes=max(1, int(tier.capacity_bytes * share + 0.5)))
        if isinstance(tier, RemoteTierConfig) else tier
        for tier in config.tiers)
    return dataclasses.replace(config, layout=layout, tiers=tiers)


def other_layout_tiers(config: KVTierConfig, layout: KVLayout, replica: int = 0) -> list[OtherLayouts]:
    """For each folder tier of `config` (the whole model's), a read-only tier that serves shard `layout`
    from what other layouts wrote there (to pass as TieredKVCache's `read_tiers`)."""
    from kvtier.types import TierKind

    return [OtherLayouts(layout, tier.path, config.layout, shard_path(tier.path, layout, config.layout, replica),
                         TierKind.SHARED if isinstance(tier, SharedTierConfig) else TierKind.DISK)
            for tier in config.tiers if isinstance(tier, FolderTierConfig)]
