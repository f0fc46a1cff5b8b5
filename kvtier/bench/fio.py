"""fio as the storage bench's ceiling: the job of one slice of block objects, run, and its JSON read back.

One file per block object (bs = filesize = the object's bytes), one job section per worker thread
(thread, psync), each thread's files in order, buffered or O_DIRECT; the JSON+ output becomes a FioResult.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtier.errors import KVTierError

FIO_MODES = ("buffered", "direct")
INSTALL_HINT = "apt-get install fio"
DIRECT_ALIGN_BYTES = 4096  # O_DIRECT wants sizes in whole logical blocks; 4096 covers every disk
MAX_NAMES_CHARS = 4000  # NOTE: fio 3.33 refuses a filename= value over 4096 bytes: longer lists split
TIMEOUT_S = 600.0


class FioError(KVTierError):
    """fio did not run, failed, or moved other objects than its job listed."""


def find_fio() -> str | None:
    """The fio on PATH, or None."""
    return shutil.which("fio")


def fio_version(binary: str) -> str | None:
    """`fio-3.33`, or None when the binary does not answer."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def direct_refusal(folder: Path, object_bytes: int) -> str | None:
    """Why fio cannot write objects of this size to `folder` with O_DIRECT, or None when it can."""
    if object_bytes % DIRECT_ALIGN_BYTES:
        return f"objects of {object_bytes} B are not a multiple of {DIRECT_ALIGN_BYTES} B"
    if not hasattr(os, "O_DIRECT"):
        return "this OS has no O_DIRECT"
    fd, probe = tempfile.mkstemp(prefix=".kvtier-direct-", dir=folder)  # a name of our own, never a user's file
    os.close(fd)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError as exc:
        return f"{folder} refuses O_DIRECT ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    finally:
        os.unlink(probe)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class FioJob:
    """One slice as fio jobs: `names[t]` are the files thread t writes or reads, in order, under `folder`.

    NOTE: fsync_on_close=1, not fsync=1: fio 3.33's fsync=1 skips the sync of each thread's last
    file (n - 1 syncs for n files in its JSON); on close is every file, as the tier promises.
    NOTE: invalidate=0: fio invalidates a file at every open, so a block read twice in one slice
    would come from disk for fio alone; the bench drops fio's files around each slice as it does
    every side's (page_cache.drop_cached), so each slice starts cold all the same.
    """

    kind: str  # "write" or "read"
    folder: Path
    object_bytes: int
    direct: bool
    fsync: bool
    names: Sequence[Sequence[str]]

    def text(self) -> str:
        """The job file: a global section and one section per thread with files."""
        lines = ["[global]", f"directory={_escape(str(self.folder))}", "thread=1", "ioengine=psync",
                 f"rw={self.kind}", f"bs={self.object_bytes}", f"filesize={self.object_bytes}",
                 "openfiles=1", "file_service_type=sequential", "create_on_open=1", "fallocate=none",
                 f"direct={int(self.direct)}", "invalidate=0", f"fsync_on_close={int(self.fsync)}",
                 "group_reporting=1"]
        for index, names in enumerate(n for n in self.names if n):
            lines += [f"[{self.kind}{index}]", "filename=" + ":".join(names)]
        return "\n".join(lines) + "\n"


def split_names(names: Sequence[Sequence[str]], max_chars: int = MAX_NAMES_CHARS) -> list[list[list[str]]]:
    """Cut per-thread lists into consecutive jobs whose every `filename=` list fits in `max_chars`."""
    chunks: list[list[list[str]]] = []
    cursors = [0] * len(names)
    while any(c < len(n) for c, n in zip(cursors, names)):
        chunk = []
        for t, thread_names in enumerate(names):
            taken, chars = [], 0
            while cursors[t] < len(thread_names) and chars + len(thread_names[cursors[t]]) + 1 <= max_chars:
                chars += len(thread_names[cursors[t]]) + 1
                taken.append(thread_names[cursors[t]])
                cursors[t] += 1
            chunk.append(taken)
        chunks.append(chunk)
    return chunks


@dataclass(frozen=True, slots=True)
class FioResult:
    """One direction of one fio run (all threads as a group): counts, fio's runtime, clat."""

    kind: str
    ops: int
    bytes_moved: int
    runtime_s: float  # the longest thread's, at fio's 1 ms resolution
    bw_bytes: float  # per second
    iops: float
    clat_percentiles_ms: dict[str, float]  # fio's own, "50.000000" -> ms
    clat_bins_ns: tuple[tuple[int, int], ...]  # (latency ns, op count), fio's log-linear histogram

    def latencies_s(self) -> list[float]:
        """Each op's completion latency (the read()/write() call alone) at the histogram's resolution."""
        return [ns / 1e9 for ns, count in self.clat_bins_ns for _ in range(count)]


def parse_output(text: str, kind: str) -> FioResult:
    """The `kind` direction of fio's `--output-format=json+` output (one group: group_reporting=1).

    Raises:
        ValueError: not fio's JSON, or the job reports an error.
    """
    start = text.find("{")
    doc: dict[str, Any] = json.loads(text[start:]) if start >= 0 else {}
    jobs = doc.get("jobs") or []
    if len(jobs) != 1:
        raise ValueError(f"fio output has {len(jobs)} job groups, expected 1 (group_reporting=1)")
    job = jobs[0]
    if job.get("error"):
        raise ValueError(f"fio job {job.get('jobname')!r} failed with error {job['error']}")
    side, clat = job[kind], job[kind]["clat_ns"]
    return FioResult(kind=kind, ops=int(side["total_ios"]), bytes_moved=int(side["io_bytes"]),
                     runtime_s=max(int(side["runtime"]), 1) / 1e3, bw_bytes=float(side["bw_bytes"]),
                     iops=float(side["iops"]),
                     clat_percentiles_ms={q: ns / 1e6 for q, ns in (clat.get("percentile") or {}).items()},
                     clat_bins_ns=tuple(sorted((int(ns), int(n)) for ns, n in (clat.get("bins") or {}).items())))


def run_job(binary: str, job: FioJob) -> FioResult:
    """Run `job` (the job file on stdin, the JSON on stdout: nothing else lands on the disk).

    Raises:
        FioError: fio did not run, failed, or moved fewer objects than the job lists.
    """
    expected = sum(len(n) for n in job.names)
    what = f"fio {job.kind} of {expected} objects in {job.folder}"
    try:
        out = subprocess.run([binary, "--eta=never", "--output-format=json+", "-"], input=job.text(),
                             capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FioError(f"{what} did not run: {exc}") from exc
    try:
        result = parse_output(out.stdout, job.kind)
    except (ValueError, KeyError) as exc:
        raise FioError(f"{what} failed (exit {out.returncode}): {exc}; {out.stderr[-500:]}") from exc
    if out.returncode != 0 or result.ops != expected:
        raise FioError(f"{what} moved {result.ops} (exit {out.returncode}): {out.stderr[-500:]}")
    return result


def _escape(path: str) -> str:
    return path.replace(":", "\\:")  # fio splits directory= and filename= at ':'
