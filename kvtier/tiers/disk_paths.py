"""Names in a disk tier's folder: objects by hex digest in a one-level fan-out, temporaries, quarantine.

    ROOT/ab/abcd...(64 hex).kvb           one block object
    ROOT/ab/.abcd....HOST.PID.N.tmp       a write in progress (renamed onto the object when done)
    ROOT/quarantine/abcd....HOST.PID.N.bad  a corrupt object moved aside in a shared folder

NOTE: one level of 256 folders, not two of 65,536: a young cache would otherwise create a
folder for nearly every put (a measured 0.3 ms each), and 256 folders of a few thousand
entries each are well within what ext4, XFS and NFS directories index efficiently.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kvtier.types import BlockHash

OBJECT_SUFFIX = ".kvb"
TEMP_SUFFIX = ".tmp"
QUARANTINE_DIR = "quarantine"
_HEX2 = re.compile(r"[0-9a-f]{2}")
logger = logging.getLogger(__name__)
_counter = itertools.count()  # NOTE: next() on itertools.count is atomic under the GIL


FANOUT_DIRS = tuple(f"{i:02x}" for i in range(256))


def make_fanout(root: str) -> None:
    """Create `root` and its 256 fan-out folders up front (a few ms once), so that no put pays for one.

    NOTE: made lazily, a young cache created a folder on nearly every one of its first
    several hundred puts; with fsync each cost a journal commit (measured 0.3 ms), which made
    the first seconds of a fresh tier up to 3x slower than plain files.
    """
    os.makedirs(root, exist_ok=True)
    for name in FANOUT_DIRS:
        try:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        except OSError as exc:  # no inode or quota left: puts make what they need, or fail typed
            logger.warning("could not create the fan-out folders of %s (%s); they will be made on use", root, exc)
            return


def object_relpath(block_hash: bytes) -> str:
    """`ab/abcd....kvb`: the only way a path is ever built from a key (its hex digest)."""
    digest = block_hash.hex()
    return f"{digest[:2]}/{digest}{OBJECT_SUFFIX}"


def parse_object_name(name: str) -> BlockHash | None:
    """The block hash an object file name stands for, or None if it is not an object name."""
    if len(name) != 64 + len(OBJECT_SUFFIX) or not name.endswith(OBJECT_SUFFIX):
        return None
    digest = name[:64]
    if not digest.islower() and not digest.isdigit():
        return None  # upper-case hex is another name than the one object_relpath builds
    try:
        return BlockHash(bytes.fromhex(digest))
    except ValueError:
        return None


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def unique_suffix() -> str:
    """`HOST.PID.N`: unique among every writer of a shared folder (hosts, processes, threads)."""
    return f"{_host()}.{os.getpid()}.{next(_counter)}"


def temp_name(block_hash: bytes) -> str:
    """A hidden temporary name beside the object, so that `rename` stays within one folder."""
    return f".{block_hash.hex()}.{unique_suffix()}{TEMP_SUFFIX}"


def quarantine_name(block_hash: bytes) -> str:
    return f"{block_hash.hex()}.{unique_suffix()}.bad"


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A file met while scanning the fan-out; `block_hash` is None for temporaries and strays."""

    path: str
    size: int
    mtime_ns: int
    block_hash: BlockHash | None
    is_temp: bool


def scan_leaf(leaf: str) -> list[FoundFile]:
    """The files of one fan-out folder; an object is only recognised in the folder its name maps to."""
    found: list[FoundFile] = []
    prefix = os.path.basename(leaf)  # "ab"
    try:
        entries = list(os.scandir(leaf))
    except OSError:
        return found  # removed or unreadable while scanning: nothing here to index
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        name = entry.name
        block_hash = parse_object_name(name)
        if block_hash is not None and not name.startswith(prefix):
            block_hash = None
        is_temp = name.startswith(".") and name.endswith(TEMP_SUFFIX)
        found.append(FoundFile(entry.path, st.st_size, st.st_mtime_ns, block_hash, is_temp))
    return found


def is_stale(found: FoundFile, max_age_s: float) -> bool:
    return time.time_ns() - found.mtime_ns > max_age_s * 1e9


def hex_subdirs(folder: str) -> Iterator[str]:
    """The `ab`-named subfolders of `folder` (one level of the fan-out)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if _HEX2.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            yield entry.path
