"""Whether a folder can publish objects without a temporary name: an O_TMPFILE inode linked into place.

The inode has no name until it is whole (and, with fsync, durable), so readers never see it
half-written and a writer killed midway leaves nothing behind. Linux only, and only where the
filesystem supports O_TMPFILE (ext4, XFS, btrfs, tmpfs; not NFS). Linking an open file needs
`linkat(fd, "", AT_EMPTY_PATH)` (CAP_DAC_READ_SEARCH, so usually root) or `linkat` through
`/proc/self/fd/N`; sandboxes refuse one or the other, so the probe tries both.
"""
from __future__ import annotations

import logging

from kvtier.tiers.disk import pyfileio
from kvtier.tiers.disk.folder import remove_probe
from kvtier.tiers.disk.names import FANOUT_DIRS, unique_suffix

logger = logging.getLogger(__name__)


def probe_linking(root_fd: int, mode: int, fanout: str = FANOUT_DIRS[0]) -> bool | None:
    """How O_TMPFILE inodes can be linked in the fan-out folder `fanout` of the tier at `root_fd`:
    False through AT_EMPTY_PATH, True through /proc/self/fd, None not at all (objects then get
    temporary names). Logs the outcome."""
    if not pyfileio.O_TMPFILE:
        return None
    for via_proc in (False, True):
        name = f".tmpfile-probe.{unique_suffix()}"
        try:
            pyfileio.publish_unnamed(root_fd, fanout, name, [b""], False, via_proc, mode)
        except (OSError, AttributeError) as exc:  # AttributeError: no linkat in this libc
            logger.debug("linking O_TMPFILE inodes (via_proc=%s) fails here: %s", via_proc, exc)
            continue
        remove_probe(root_fd, fanout, name)
        return via_proc
    logger.info("O_TMPFILE inodes cannot be created or linked in this tier's folder; objects get temporary names")
    return None
