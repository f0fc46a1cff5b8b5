"""Names of the folders that hold one parallel layout's shards of every block, under a folder tier.

    ROOT/ab/abcd....kvb                                    the whole model's objects (any one-rank run)
    ROOT/shards/layers-A-B.heads-C-D/ab/abcd....kvb        the objects of layers [A, B), KV heads [C, D)
    ROOT/shards/layers-A-B.heads-C-D.replica-R/...         copy R of those heads (more tensor ranks than KV heads)

Each shard folder is a tier folder of its own (budget, index, warm restart); the name says which
rectangle of the model's layers x KV heads its objects hold, so a reader of another layout can
pick the folders that cover what it needs by listing ROOT/shards alone.
"""
from __future__ import annotations

import os
import re
import stat
from typing import NamedTuple

SHARDS_DIR = "shards"
_NAME = re.compile(r"layers-(\d{1,7})-(\d{1,7})\.heads-(\d{1,7})-(\d{1,7})(?:\.replica-([1-9]\d{0,6}))?")


class ShardName(NamedTuple):
    layers: tuple[int, int]  # [start, end) of the model's layers
    heads: tuple[int, int]  # [start, end) of the model's KV heads
    replica: int = 0


def shard_folder_name(layers: tuple[int, int], heads: tuple[int, int], replica: int = 0) -> str:
    return f"layers-{layers[0]}-{layers[1]}.heads-{heads[0]}-{heads[1]}" + (f".replica-{replica}" if replica else "")


def parse_shard_folder_name(name: str) -> ShardName | None:
    """The rectangle a shard folder's name stands for, or None unless it is exactly such a name
    (canonical digits, non-empty ranges)."""
    match = _NAME.fullmatch(name)
    if match is None or name != shard_folder_name(*_ranges(match)):
        return None
    layers, heads, replica = _ranges(match)
    if layers[0] >= layers[1] or heads[0] >= heads[1]:
        return None
    return ShardName(layers, heads, replica)


def _ranges(match: re.Match[str]) -> tuple[tuple[int, int], tuple[int, int], int]:
    a, b, c, d, r = match.groups()
    return (int(a), int(b)), (int(c), int(d)), int(r or 0)


def list_shard_folders(root: str) -> list[tuple[str, ShardName]]:
    """(path, rectangle) of each shard folder of the tier folder `root`, by name: real folders with
    a shard folder's name under ROOT/shards, never a link (none when ROOT/shards is not a real folder)."""
    shards = os.path.join(root, SHARDS_DIR)
    if not _is_real_folder(shards):
        return []
    found = []
    for name in sorted(os.listdir(shards)):
        parsed = parse_shard_folder_name(name)
        path = os.path.join(shards, name)
        if parsed is not None and _is_real_folder(path):
            found.append((path, parsed))
    return found


def _is_real_folder(path: str) -> bool:
    """A folder and not a link to one: the store never follows a link out of its root."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
