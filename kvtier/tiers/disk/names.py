"""Names in a disk tier's folder: objects by hex digest in a one-level fan-out, temporaries, quarantine.

    ROOT/ab/abcd...(64 hex).kvb           one block object
    ROOT/ab/.abcd....HOST.PID.N.tmp       a write in progress (renamed onto the object when done)
    ROOT/quarantine/abcd....HOST.PID.N.bad  a damaged object moved aside

NOTE: one level of 256 folders, not two of 65,536: a young cache would otherwise create a folder
for nearly every put, and 256 folders of a few thousand entries each are well within what ext4,
XFS and NFS directories index efficiently.
"""
from __future__ import annotations

import functools
import itertools
import os
import re
import socket

from kvtier.types import BlockHash

OBJECT_SUFFIX = ".kvb"
TEMP_SUFFIX = ".tmp"
QUARANTINE_DIR = "quarantine"
FANOUT_DIRS = tuple(f"{i:02x}" for i in range(256))
_counter = itertools.count()  # NOTE: next() on itertools.count is atomic under the GIL


def object_name(block_hash: bytes, suffix: str = OBJECT_SUFFIX) -> tuple[str, str]:
    """`("ab", "abcd....kvb")`: the fan-out folder and file name of a block, from its hex digest only."""
    digest = block_hash.hex()
    return digest[:2], digest + suffix


def object_relpath(block_hash: bytes, suffix: str = OBJECT_SUFFIX) -> str:
    """`ab/abcd....kvb`: the only way a path is ever built from a key."""
    fanout, name = object_name(block_hash, suffix)
    return f"{fanout}/{name}"


def parse_object_name(name: str) -> BlockHash | None:
    """The block hash an object file name stands for, or None unless it is exactly 64 lowercase hex + .kvb.

    NOTE: `bytes.fromhex` alone skips spaces, so ASCII letters and digits only are let through to
    it; string methods, not a regex, since a restart parses every name in the folder.
    """
    if len(name) != 64 + len(OBJECT_SUFFIX) or not name.endswith(OBJECT_SUFFIX):
        return None
    digest = name[:64]
    if not (digest.isascii() and digest.isalnum()) or digest != digest.lower():
        return None
    try:
        return BlockHash(bytes.fromhex(digest))
    except ValueError:  # letters beyond f
        return None


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def unique_suffix() -> str:
    """`HOST.PID.N`: unique among every writer of a shared folder (hosts, processes, threads)."""
    return f"{_host()}.{os.getpid()}.{next(_counter)}"


def temp_name(block_hash: bytes) -> str:
    """A hidden temporary name beside the object, so that `rename` stays within one folder."""
    return f".{block_hash.hex()}.{unique_suffix()}{TEMP_SUFFIX}"


def quarantine_name(object_file_name: str) -> str:
    """A unique name in the quarantine for a damaged object's file."""
    return f"{object_file_name.split('.', 1)[0]}.{unique_suffix()}.bad"
