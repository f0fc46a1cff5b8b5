"""Facts about where a storage bench ran: the filesystem and device of its folder, versions, the commit."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def filesystem_of(path: Path) -> dict[str, Any]:
    """Mount point, filesystem type and device of `path` (longest match in /proc/mounts)."""
    target = os.path.realpath(path)
    best: dict[str, Any] = {"mount_point": None, "fs_type": None, "device": None}
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                device, mount, fs_type = line.split()[:3]
                mount = mount.replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best["mount_point"] or ""):
                    best = {"mount_point": mount, "fs_type": fs_type, "device": device}
    except OSError:
        pass  # not Linux: leave the facts empty rather than guess
    return best


def git_sha() -> str | None:
    """The checkout's commit when kvtier runs from a git tree, else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_facts(path: Path) -> dict[str, Any]:
    import torch

    import kvtier

    usage = shutil.disk_usage(path)
    return {**filesystem_of(path), "free_bytes": usage.free, "total_bytes": usage.total,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "kvtier": kvtier.__version__, "git_sha": git_sha()}
