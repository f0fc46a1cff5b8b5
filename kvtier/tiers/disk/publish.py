"""Give one encoded object its name in a tier's folder, atomically, whichever way the folder allows.

An O_TMPFILE inode linked into place where the store probed that it can (local disks), else a
temporary name renamed onto the object (NFS, or a leftover the index did not know at the name:
rename replaces it atomically). A fan-out folder removed since the store started is made again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvtier.tiers.disk.fileio import FileIO
from kvtier.tiers.disk.folder import TierFolder
from kvtier.tiers.disk.names import temp_name
from kvtier.tiers.format import BufferLike


@dataclass(frozen=True, slots=True)
class Publisher:
    """How one store writes: its file I/O module, folder, durability, link route, file mode and
    whether with O_DIRECT."""

    io: FileIO
    folder: TierFolder
    fsync: bool
    via_proc: bool | None  # None: no O_TMPFILE linking here (see tmpfile.probe_linking)
    file_mode: int
    direct: bool = False

    def publish(self, block_hash: bytes, fanout: str, name: str, parts: Sequence[BufferLike]) -> None:
        """Write `parts` as `fanout/name`; raises OSError with nothing left behind."""
        try:
            self._publish(block_hash, fanout, name, parts)
        except FileNotFoundError:  # NOTE: a fan-out folder removed since start (by hand, or a shared-folder gc)
            with self.folder.subdir(fanout, create=True):
                pass
            self._publish(block_hash, fanout, name, parts)

    def _publish(self, block_hash: bytes, fanout: str, name: str, parts: Sequence[BufferLike]) -> None:
        root_fd = self.folder.fd
        if self.via_proc is not None:
            try:
                self.io.publish_unnamed(root_fd, fanout, name, parts, self.fsync, self.via_proc, self.file_mode,
                                        self.direct)
                return
            except FileExistsError:  # a leftover the index did not know: replaced atomically below
                pass
        self.io.write_renamed(root_fd, fanout, temp_name(block_hash), name, parts, self.fsync, self.file_mode,
                              self.direct)
