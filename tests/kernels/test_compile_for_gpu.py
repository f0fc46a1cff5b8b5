"""Every kernel compiles for real GPU targets at its CUDA launch configuration, even without a GPU.

The interpreter does not run the compiler, so this is what would catch code that ptxas or the
Triton front end rejects, or a tile that needs more shared memory than the card has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNELS = {"_paged_decode_split_kernel", "_paged_decode_reduce_kernel", "_paged_prefill_kernel",
           "_store_kv_kernel", "_copy_blocks_kernel"}
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block, A100 / H100


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


def _compile(arch: int, full: bool) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, "-m", "tests.kernels.aot_compile", "--arch", str(arch)]
    done = subprocess.run(cmd + (["--full"] if full else []), capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _check(rows: list[dict], arch: int) -> None:
    assert {row["kernel"] for row in rows} == KERNELS
    for row in rows:
        assert row["cubin_bytes"] > 0
        assert row["shared_bytes"] <= MAX_SHARED_BYTES[arch], row


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton has no NVIDIA backend here")
def test_kernels_compile_for_sm90():
    _check(_compile(90, full=False), 90)


@pytest.mark.slow
@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton has no NVIDIA backend here")
@pytest.mark.parametrize("arch", [80, 90])
def test_every_dtype_and_head_dim_compiles(arch):
    _check(_compile(arch, full=True), arch)
