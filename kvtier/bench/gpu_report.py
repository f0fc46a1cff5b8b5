"""Run the whole GPU check, save it as JSON, and format its table (benches/gpu_check.py's logic)."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kvtier.bench.gpu import (
    bench_decode,
    bench_transfer,
    copy_bandwidths,
    decode_tunings,
    run_gpu_tests,
    sweep_decode,
)
from kvtier.bench.gpu_cases import cpu_timer, cuda_timer, dry_run_cases, full_cases


def kernels_digest(repo: Path) -> str:
    """sha256 over the kernel sources as they are on disk: names the code that ran even where the
    checkout's .git is stale or absent (a copied working tree, uncommitted edits)."""
    digest = hashlib.sha256()
    for path in sorted((repo / "kernels").glob("*.py")):
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
    decode_cases, transfer_cases = dry_run_cases() if dry_run else full_cases()
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


def _verdict(fraction: float, target: float, dry_run: bool) -> str:
    if dry_run:
        return "(dry run: not a measurement)"
    return "ok" if fraction >= target else "BELOW"


def _sweep_lines(rows: list[dict[str, Any]], best: int = 4) -> list[str]:
    """The fastest few launch variants of each decode case, and how many failed to build."""
    lines = []
    for name in dict.fromkeys(r["name"] for r in rows):
        ok = sorted((r for r in rows if r["name"] == name and "error" not in r),
                    key=lambda r: r["kernel_ms"])
        failed = [r for r in rows if r["name"] == name and "error" in r]
        wrong = sum(1 for r in failed if r.get("wrong"))
        lines.append(f"sweep {name}: {len(ok)} variants ran, {len(failed) - wrong} did not build, "
                     f"{wrong} WRONG; fastest:")
        lines += [f"  block_n={r['block_n']} warps={r['num_warps']} stages={r['num_stages']} "
                  f"programs/SM={r['programs_per_sm']}: {r['kernel_ms']:.3f} ms "
                  f"{r['kernel_gbps']:.1f} GB/s {r['fraction_of_d2d']:.0%} of copy" for r in ok[:best]]
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table: one row per measurement, napkin-math fraction beside the raw GB/s."""
    bw = report["bandwidth"]
    rows = [("what", "ms", "GB/s", "vs copy", "target", ""),
            ("copy D2D (read+write)", "", f"{bw['d2d_gbps']:.1f}", "", "", ""),
            ("copy H2D pinned", "", f"{bw['h2d_gbps']:.1f}", "", "", ""),
            ("copy D2H pinned", "", f"{bw['d2h_gbps']:.1f}", "", "", "")]
    for d in report["decode"]:
        rows.append((d["name"] + " triton", f"{d['kernel_ms']:.3f}", f"{d['kernel_gbps']:.1f}",
                     f"{d['fraction_of_d2d']:.0%}", f"{d['target']:.0%}",
                     _verdict(d["fraction_of_d2d"], d["target"], report["dry_run"])))
        rows.append((d["name"] + " gather+SDPA", f"{d['baseline_ms']:.3f}",
                     f"{d['baseline_gbps']:.1f}", f"{d['baseline_gbps'] / bw['d2d_gbps']:.0%}", "", ""))
    for t in report["transfer"]:
        for way, key in (("gather+D2H", "offload"), ("H2D+scatter", "onload")):
            frac = t[f"{key}_fraction_of_{'d2h' if key == 'offload' else 'h2d'}"]
            rows.append((f"{t['name']} {way}", f"{t[key + '_ms']:.3f}", f"{t[key + '_gbps']:.1f}",
                         f"{frac:.0%}", f"{t['target']:.0%}", _verdict(frac, t["target"], report["dry_run"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines += _sweep_lines(report.get("decode_sweep", []))
    tests = report["gpu_tests"]
    head = (f"device: {report['env']['device']}  torch {report['env']['torch']}  "
            f"triton {report['env']['triton']}  dry_run={report['dry_run']}  "
            f"took {report['elapsed_s']:.0f} s")
    return "\n".join([head, f"gpu tests: {tests.get('summary', 'not run')}", *lines])
