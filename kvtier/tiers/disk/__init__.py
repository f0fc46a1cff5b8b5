"""The disk tier: blocks as self-verifying files in a folder, local NVMe or a shared NFS mount.

store.py (DiskStore) builds on: folder.py (the root, entered without following links), names.py,
fileio.py (the compiled `_fileio.c` or its twin pyfileio.py), read.py, discard.py (removal and
quarantine), index.py, free_space.py, scan.py and restart.py (warm restart), and fsck.py (the
folder checks behind `kvtier cache`).
"""
from kvtier.tiers.disk.store import DiskStore

__all__ = ["DiskStore"]
