"""Whether a tier's folder takes O_DIRECT, for the disk tier's O_DIRECT mode (`direct_io`).

In that mode objects are written and read with O_DIRECT: offloading terabytes of KV does not push
the serving process's other files (weights, logs) out of the page cache, and a read's payload lands
in a page-aligned host slot by DMA instead of a copy out of the page cache. Its objects carry
page-aligned headers (format flags bit 1), so the payload starts on a page in the file. Where the
filesystem refuses O_DIRECT (some FUSE and network mounts), the store writes and reads buffered,
and says so once.
"""
from __future__ import annotations

import logging
import os

from kvtier.tiers.disk import pyfileio
from kvtier.tiers.disk.folder import remove_probe
from kvtier.tiers.disk.names import FANOUT_DIRS, unique_suffix

logger = logging.getLogger(__name__)


def probe_direct(root_fd: int, mode: int, fanout: str = FANOUT_DIRS[0]) -> bool:
    """Whether a page written to the fan-out folder `fanout` with O_DIRECT reads back the same with it
    (the probe file is removed); logs why not."""
    if not pyfileio.O_DIRECT:
        logger.warning("this OS has no O_DIRECT; the disk tier reads and writes through the page cache")
        return False
    name = f".direct-probe.{unique_suffix()}"
    page = memoryview(bytearray(os.urandom(16) * (pyfileio.DIRECT_ALIGN // 16)))
    back = memoryview(bytearray(pyfileio.DIRECT_ALIGN))
    try:
        pyfileio.write_renamed(root_fd, fanout, f"{name}.tmp", name, [page], False, mode, direct=True)
        got, _, _ = pyfileio.read_into(root_fd, fanout, name, [back], page.nbytes, direct=True)
        works = got == page.nbytes and back == page
    except OSError as exc:
        logger.warning("this tier's folder refuses O_DIRECT (%s); the disk tier reads and writes through the "
                       "page cache", exc)
        return False
    finally:
        remove_probe(root_fd, fanout, name)
    if not works:
        logger.warning("a page written with O_DIRECT in this tier's folder read back different; the disk tier "
                       "reads and writes through the page cache")
    return works
