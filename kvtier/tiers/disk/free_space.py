"""Free bytes of the filesystem under a disk tier, for its `min_free_bytes` floor, without a
`statvfs` per put.

`statvfs` is a syscall (on NFS an FSSTAT round trip to the server), too slow for every put under
the store's lock: it runs at most every `max_age_s`, outside that lock, and what this store
wrote and removed since is added in, rounded up to whole filesystem blocks.
Other processes' writes are seen within `max_age_s`; a removed file that someone still holds
open frees its space only at close, so until the next reading the estimate may run that far
ahead. A filesystem that reports no size at all (f_blocks 0: ramfs, some FUSE mounts) has no
free-space figure to keep a floor above, so it counts as unbounded (the byte budget still holds).
"""
from __future__ import annotations

import os
import threading
import time

DEFAULT_MAX_AGE_S = 0.05
UNBOUNDED_BYTES = 1 << 62  # the free bytes of a filesystem that reports no size


class FreeSpace:
    """A `statvfs`-backed estimate of the free bytes at `path`; thread-safe."""

    def __init__(self, path: str, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._free = 0
        self._block = 4096
        self._used = 0  # bytes this store wrote less those it removed since `_free` was read

    def refresh_if_stale(self) -> None:
        """Re-read `statvfs` when the last reading is older than `max_age_s` (call it outside other locks)."""
        if time.monotonic() - self._read_at < self.max_age_s:
            return
        self.refresh()

    def refresh(self) -> int:
        """Re-read `statvfs` now; the free bytes it reports."""
        with self._lock:
            used_before = self._used
        st = os.statvfs(self.path)
        with self._lock:
            self._free = st.f_bavail * st.f_frsize if st.f_blocks else UNBOUNDED_BYTES
            self._block = st.f_frsize or 4096
            self._used -= used_before  # NOTE: what changed during statvfs stays counted
            self._read_at = time.monotonic()
            return self._free

    def estimate(self) -> int:
        """Free bytes: the last reading less what this store wrote, plus what it removed, since."""
        with self._lock:
            return self._free - self._used

    def wrote(self, nbytes: int) -> None:
        """Count a file of `nbytes` this store just wrote."""
        with self._lock:
            self._used += -(-nbytes // self._block) * self._block

    def removed(self, nbytes: int) -> None:
        """Count a file of `nbytes` this store just removed."""
        with self._lock:
            self._used -= -(-nbytes // self._block) * self._block
