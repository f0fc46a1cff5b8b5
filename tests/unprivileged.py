"""Run a function as an unprivileged user, to meet EACCES where the suite runs as root (as CI does)."""
from __future__ import annotations

import io
import multiprocessing
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534


def world_traversable_dir() -> Path:
    """A fresh folder under /tmp that another user can enter (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="kvtier-perm-", dir="/tmp"))
    path.chmod(0o755)
    return path


def _child(fn: Callable[..., Any], args: tuple[Any, ...], results: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        value, raised = fn(*args), None
    except BaseException as exc:  # noqa: BLE001 - handed back to the test as text
        value, raised = None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    results.put((value, raised, out.getvalue(), err.getvalue()))


def run_unprivileged(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None, str, str]:
    """`(return value, exception text or None, stdout, stderr)` of `fn(*args)` run in a forked child
    that dropped to user nobody (when root; as another user it runs as that user)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child, args=(fn, args, results))
    child.start()
    value = results.get(timeout=120)
    child.join(timeout=30)
    return value  # type: ignore[no-any-return]
