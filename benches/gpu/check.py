"""Run the whole GPU check as one JSON-ready dict: gpu tests, bandwidths, decode, transfers, environment.

The environment names the code that ran: git SHA plus a digest of the kernel sources on disk.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benches.gpu.cases import check_cases
from benches.gpu.measure import (
    bench_decode,
    bench_transfer,
    copy_bandwidths,
    cpu_timer,
    cuda_timer,
    decode_tunings,
    sweep_decode,
)
from benches.gpu.model_step import bench_model_step, model_step_case


def kernels_digest(repo: Path) -> str:
    """sha256 over the kernel sources as they are on disk: names the code that ran even where the
    checkout's .git is stale or absent (a copied working tree, uncommitted edits)."""
    digest = hashlib.sha256()
    for path in sorted((repo / "kvtier" / "kernels").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment(repo: Path) -> dict[str, Any]:
    """Device, library versions, git SHA and a digest of the kernel sources, so a JSON file says
    what produced it."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=repo, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()})",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "git_sha": sha, "kernels_sha256": kernels_digest(repo), "python": platform.python_version()}


def run_gpu_tests(tests_dir: Path, include_slow: bool, timeout_s: float) -> dict[str, Any]:
    """Run the `gpu`-marked kernel tests in a subprocess; returns its summary line and code."""
    if not tests_dir.is_dir():
        return {"ran": False, "summary": f"no tests at {tests_dir}", "returncode": None}
    marker = "gpu" if include_slow else "gpu and not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
           str(tests_dir)]
    if importlib.util.find_spec("xdist") is not None:  # compiling every variant is CPU-bound
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=tests_dir.parents[1])
    except subprocess.TimeoutExpired:
        return {"ran": True, "command": " ".join(cmd), "returncode": None,
                "summary": f"timed out after {timeout_s:.0f} s (first runs compile every kernel "
                           "variant; rerun, or pass --skip-tests and run pytest -m gpu apart)"}
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return {"ran": True, "command": " ".join(cmd), "returncode": done.returncode,
            "summary": lines[-1] if lines else done.stderr[-500:]}


def run_check(*, dry_run: bool, repo: Path, include_slow_tests: bool = False,
              run_tests: bool = True, sweep: bool = False,
              tests_timeout_s: float = 300.0) -> dict[str, Any]:
    """Everything issue 3's GPU check asks for, as one JSON-ready dict.

    Raises:
        RuntimeError: a full run without CUDA.
    """
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("the GPU check needs CUDA; use --dry-run on a CPU-only machine")
    started = time.perf_counter()
    device = torch.device("cpu" if dry_run else "cuda")
    timer = cpu_timer if dry_run else cuda_timer
    decode_cases, transfer_cases = check_cases(dry_run)
    report: dict[str, Any] = {"dry_run": dry_run, "env": environment(repo)}
    _progress("running the gpu-marked kernel tests" if run_tests else "skipping the gpu tests")
    report["gpu_tests"] = (run_gpu_tests(repo / "tests" / "kernels", include_slow_tests,
                                         tests_timeout_s) if run_tests else {"ran": False})
    copy_bytes = transfer_cases[0].num_blocks * transfer_cases[0].layout.page_size_bytes
    _progress("measuring copy bandwidths")
    report["bandwidth"] = copy_bandwidths(copy_bytes, device, timer)
    d2d = report["bandwidth"]["d2d_gbps"]
    _progress("paged decode: checking against the reference, then timing")
    report["decode"] = [bench_decode(case, device, timer, d2d) for case in decode_cases]
    if sweep:
        _progress("paged decode: sweeping launch variants")
        tunings = decode_tunings(dry_run)
        report["decode_sweep"] = [row for case in decode_cases
                                  for row in sweep_decode(case, device, timer, d2d, tunings)]
    _progress("one decode step of the demo model's shape")
    report["model_step"] = bench_model_step(model_step_case(dry_run), device, timer, d2d)
    _progress("block transfers: checking, then timing")
    report["transfer"] = [bench_transfer(case, device, timer, report["bandwidth"])
                          for case in transfer_cases]
    report["elapsed_s"] = time.perf_counter() - started
    return report


def _progress(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def save_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
