"""Whole-folder checks behind `kvtier cache`: stat, verify (and repair), gc to a byte budget.

They need no layout: every object's header carries its own. They work on a folder a live
DiskStore also uses (it sees removed objects as misses), follow the store's rules on what is an
object (scan.py), read at most what a header announces, and never act on what they could not
read: an unreadable object is reported and left alone; repair moves only the very file it
judged damaged. An unreadable folder is an OSError, never an empty report.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import xxhash

from kvtier.errors import FormatError
from kvtier.tiers.disk.discard import quarantine, quarantine_files, remove_damaged
from kvtier.tiers.disk.folder import TierFolder
from kvtier.tiers.disk.names import QUARANTINE_DIR, object_name
from kvtier.tiers.disk.pyfileio import READ_FLAGS
from kvtier.tiers.disk.scan import FoundFile, scan_folder
from kvtier.tiers.disk.shard_names import list_shard_folders
from kvtier.tiers.format import (
    FIXED_HEADER_BYTES,
    MAX_OBJECT_BYTES,
    BlockHeader,
    decode_header,
    header_length,
)

NUM_VERIFY_THREADS = 4
MAX_LISTED_PATHS = 20  # paths named in a report
READ_CHUNK_BYTES = 1 << 20  # a payload is checksummed in pieces: memory stays bounded whatever the object's size


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking one object found: damage (with the inode judged), or that it could not be read."""

    why: str
    inode: int | None = None  # set for damage: a repair touches only that file
    unreadable: bool = False


def stat_folder(root: str) -> dict[str, Any]:
    """Objects and bytes in total and per namespace (hex, from the headers), temporaries, ignored
    entries and the quarantine; the same for each shard folder under `shards`, by name."""
    report = _stat_one(root)
    report["shards"] = {os.path.basename(path): _stat_one(path) for path, _ in list_shard_folders(root)}
    return report


def _stat_one(root: str) -> dict[str, Any]:
    with contextlib.closing(TierFolder(root, 0o700, existing=True)) as folder:
        scan = scan_folder(folder, MAX_OBJECT_BYTES)
        per_namespace: dict[str, dict[str, int]] = {}
        unreadable = 0
        for obj in scan.objects:
            try:
                fd, header, _ = _open_checked(folder, obj)
                os.close(fd)
            except OSError:
                unreadable += 1
                continue
            entry = per_namespace.setdefault(header.namespace.hex(), {"objects": 0, "bytes": 0})
            entry["objects"] += 1
            entry["bytes"] += obj.size
        quarantined = _quarantine(folder)
    return {"path": folder.path, "objects": len(scan.objects), "bytes": sum(f.size for f in scan.objects),
            "unreadable": unreadable, "oversized": len(scan.oversized), "misplaced": len(scan.misplaced),
            "temporary_files": len(scan.temps),
            "ignored": scan.num_ignored, "quarantine_files": len(quarantined),
            "quarantine_bytes": sum(size for _, _, size in quarantined), "namespaces": per_namespace}


def check_object(folder: TierFolder, found: FoundFile) -> Verdict | None:
    """None if the object verifies completely under its own name, else what is wrong (or unreadable)."""
    try:
        fd, header, inode = _open_checked(folder, found)
    except _Damaged as exc:
        return Verdict(str(exc), exc.inode)
    except OSError as exc:
        return Verdict(f"unreadable: {exc}", unreadable=True)
    try:
        checksum = _payload_checksum(fd, header)
    except OSError as exc:
        return Verdict(f"unreadable: {exc}", unreadable=True)
    finally:
        os.close(fd)
    if checksum != header.payload_checksum:
        return Verdict("payload checksum mismatch: the payload is corrupt", inode)
    if object_name(header.block_hash) != (found.fanout, found.name):
        return Verdict(f"object of block {header.block_hash.hex()} is stored under the wrong name or folder", inode)
    return None


def verify_folder(root: str, repair: bool = False) -> dict[str, Any]:
    """Read and check every object; with `repair`, move each damaged one to ROOT/quarantine (or remove
    a file too large to be an object). The same in each shard folder (its own quarantine), by name."""
    report = _verify_one(root, repair)
    report["shards"] = {os.path.basename(path): _verify_one(path, repair) for path, _ in list_shard_folders(root)}
    return report


def _verify_one(root: str, repair: bool) -> dict[str, Any]:
    with contextlib.closing(TierFolder(root, 0o700, existing=True)) as folder:
        scan = scan_folder(folder, MAX_OBJECT_BYTES)
        objects = scan.objects + scan.oversized + scan.misplaced
        with ThreadPoolExecutor(max_workers=NUM_VERIFY_THREADS, thread_name_prefix="kvtier-verify") as pool:
            verdicts = list(pool.map(lambda f: check_object(folder, f), objects))
        damaged = [(f, v) for f, v in zip(objects, verdicts) if v is not None and not v.unreadable]
        unreadable = [(f, v) for f, v in zip(objects, verdicts) if v is not None and v.unreadable]
        repaired = sum(_repair(folder, f, v) for f, v in damaged) if repair else 0
    return {"path": folder.path, "objects": len(objects), "ok": len(objects) - len(damaged) - len(unreadable),
            "corrupt": len(damaged), "unreadable": len(unreadable), "ignored": scan.num_ignored,
            "bytes": sum(f.size for f in objects), "repaired": repaired,
            "reasons": dict(Counter(v.why.split(":")[0] for _, v in damaged)),
            "corrupt_paths": [f"{folder.path}/{f.relpath}" for f, _ in damaged[:MAX_LISTED_PATHS]],
            "unreadable_paths": [f"{folder.path}/{f.relpath}" for f, _ in unreadable[:MAX_LISTED_PATHS]]}


def gc_folder(root: str, to_bytes: int) -> dict[str, Any]:
    """Remove the quarantines, then the least recently written objects (by mtime), until what is
    left in the folder and its shard folders totals at most `to_bytes`."""
    if isinstance(to_bytes, bool) or not isinstance(to_bytes, int) or to_bytes < 0:
        raise ValueError(f"gc budget must be a whole number of bytes >= 0, got {to_bytes!r}")
    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(contextlib.closing(TierFolder(path, 0o700, existing=True)))
                   for path in (root, *(path for path, _ in list_shard_folders(root)))]
        objects = sorted(((folder, obj) for folder in folders for obj in scan_folder(folder, MAX_OBJECT_BYTES).objects),
                         key=lambda pair: pair[1].mtime_ns)
        quarantined = [(folder, _quarantine(folder)) for folder in folders]
        total = sum(obj.size for _, obj in objects) + sum(size for _, q in quarantined for _, _, size in q)
        left, q_removed = total, 0
        for folder, files in quarantined:
            if not files or left <= to_bytes:
                continue
            with folder.subdir(QUARANTINE_DIR) as q_fd:
                for _, name, size in files:
                    with contextlib.suppress(FileNotFoundError):  # gone already: its bytes are freed all the same
                        os.unlink(name, dir_fd=q_fd)
                    left, q_removed = left - size, q_removed + 1
        removed = 0
        for folder, obj in objects:
            if left <= to_bytes:
                break
            folder.unlink(obj.fanout, obj.name)  # NOTE: gone already is all the same: its bytes are freed
            left, removed = left - obj.size, removed + 1
    return {"path": folders[0].path, "folders": len(folders), "objects_before": len(objects), "bytes_before": total,
            "removed": removed, "bytes_removed": total - left, "quarantine_removed": q_removed,
            "objects": len(objects) - removed, "bytes": left, "budget_bytes": to_bytes}


class _Damaged(OSError):
    """A header or size that proves the file damaged (not merely unreadable)."""

    def __init__(self, why: str, inode: int) -> None:
        super().__init__(why)
        self.inode = inode

    def __str__(self) -> str:
        return str(self.args[0])


def _open_checked(folder: TierFolder, found: FoundFile) -> tuple[int, BlockHeader, int]:
    """`(open fd, verified header, inode)` of an object whose size its header announces; the
    caller closes the fd. Raises _Damaged, or OSError when it cannot be read."""
    with folder.subdir(found.fanout) as dir_fd:
        fd = os.open(found.name, READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{found.relpath} is no longer a regular file")
        if st.st_size > MAX_OBJECT_BYTES:
            raise _Damaged(f"file of {st.st_size} bytes is larger than any object can be", st.st_ino)
        try:
            header = decode_header(os.pread(fd, header_length(os.pread(fd, FIXED_HEADER_BYTES, 0)), 0))
        except FormatError as exc:
            raise _Damaged(str(exc), st.st_ino) from exc
        if header.object_bytes != st.st_size:
            raise _Damaged(f"object is {st.st_size} bytes, its header announces {header.object_bytes}", st.st_ino)
    except BaseException:
        os.close(fd)
        raise
    return fd, header, st.st_ino


def _payload_checksum(fd: int, header: BlockHeader) -> int:
    state = xxhash.xxh3_64()
    for offset in range(header.header_len, header.object_bytes, READ_CHUNK_BYTES):
        state.update(os.pread(fd, min(READ_CHUNK_BYTES, header.object_bytes - offset), offset))
    return int(state.intdigest())


def _repair(folder: TierFolder, found: FoundFile, verdict: Verdict) -> bool:
    if found.kind == "oversized":
        remove_damaged(folder, found.fanout, found.name, verdict.inode)
    else:
        quarantine(folder, found.fanout, found.name, verdict.inode)
    return True


def _quarantine(folder: TierFolder) -> list[tuple[int, str, int]]:
    try:
        with folder.subdir(QUARANTINE_DIR, listing=True) as q_fd:
            return quarantine_files(q_fd)
    except FileNotFoundError:
        return []
