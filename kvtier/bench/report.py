"""Turn timed phases into the storage-bench report: GB/s, IOPS, latency, ratios, break-even, facts."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtier.bench.round_stats import WARMUP_ROUNDS, ratio_interval, round_ratios
from kvtier.bench.runner import PhaseResult
from kvtier.tiers.disk.fileio import native_built
from kvtier.transfer.latency import percentile_ms

if TYPE_CHECKING:
    from kvtier.bench.storage import StorageBenchConfig

PREFIX_TOKENS = (1024, 8192, 32768)


def direction(prefix: str, phase: PhaseResult, kind: str) -> dict[str, Any]:
    """GB/s, IOPS, op count and p50/p90/p99 of one direction of one phase, keys prefixed."""
    lat = phase.latencies_s[kind]
    wall = phase.wall_s
    return {
        f"{prefix}gbps": phase.gbps(kind),
        f"{prefix}iops": len(lat) / wall if wall > 0 else 0.0,
        f"{prefix}ops": len(lat),
        f"{prefix}bytes": phase.bytes_moved(kind),
        f"{prefix}p50_ms": percentile_ms(lat, 50),
        f"{prefix}p90_ms": percentile_ms(lat, 90),
        f"{prefix}p99_ms": percentile_ms(lat, 99),
    }


def ratio(value: float, ceiling: float) -> float | None:
    return value / ceiling if ceiling > 0 else None


def break_even(bytes_per_token: float, read_gbps: float) -> dict[str, Any]:
    """Bytes per token and the time to onload an N-token prefix at the measured read bandwidth."""
    seconds = {n: (n * bytes_per_token / (read_gbps * 1e9) if read_gbps > 0 else None)
               for n in PREFIX_TOKENS}
    return {
        "bytes_per_token": bytes_per_token,
        "prefix_load_ms": {str(n): (s * 1e3 if s is not None else None) for n, s in seconds.items()},
    }


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


def format_table(report: dict[str, Any]) -> str:
    """A plain, aligned table of the headline numbers."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    cfg = report["config"]
    rows = [("", "tier", "raw", "ratio")]
    for kind in ("write", "read"):
        rows.append((f"{kind} GB/s", num(report[f"{kind}_gbps"], ".3f"),
                     num(report[f"raw_{kind}_gbps"], ".3f"), num(report[f"{kind}_ratio"], ".3f")))
        rows.append((f"{kind} IOPS", num(report[f"{kind}_iops"], ".0f"),
                     num(report[f"raw_{kind}_iops"], ".0f"), ""))
        for q in ("p50", "p90", "p99"):
            rows.append((f"{kind} {q} ms", num(report[f"{kind}_{q}_ms"], ".3f"),
                         num(report[f"raw_{kind}_{q}_ms"], ".3f"), ""))
    lines = [(f"kvtier bench storage{' --calibrate (plain files on both sides)' if cfg['calibrate'] else ''}: "
              f"{cfg['block_bytes']} B blocks ({cfg['block_size']} tokens), "
             f"codec {cfg['codec']}, fsync {cfg['fsync']}, concurrency {cfg['concurrency']}, "
             f"read ratio {cfg['read_ratio']}, {'compiled' if cfg['native_io'] else 'Python'} file I/O, "
             f"{report['device']['fs_type']} at {cfg['path']}")]
    lines += [f"{a:<14}{b:>12}{c:>12}{d:>8}" for a, b, c, d in rows]
    spread = "; ".join(
        f"{kind} median {num(r['median'], '.3f')} (quartiles {num(r['q1'], '.3f')}-{num(r['q3'], '.3f')})"
        for kind, r in (("write", report["write_ratio_rounds"]), ("read", report["read_ratio_rounds"])))
    lines.append(f"ratio per round ({report['write_ratio_rounds']['rounds']} rounds): {spread}")
    intervals = "; ".join(f"{kind} {num(ci[0], '.3f')}-{num(ci[1], '.3f')}" if ci else f"{kind} -"
                          for kind, ci in (("write", report["write_ratio_ci95"]), ("read", report["read_ratio_ci95"])))
    lines.append(f"ratio 95% interval (bootstrap over this run's rounds): {intervals}")
    loads = ", ".join(f"{n} tok {num(ms, '.1f')} ms" for n, ms in report["prefix_load_ms"].items())
    lines.append(f"misses {report['misses']}, rejected {report['rejected']}; {report['bytes_per_token']:.0f} "
                 f"bytes/token; prefix load at measured read GB/s: {loads}")
    if report["tier_path"]:
        lines.append(f"objects kept in {report['tier_path']} (try `kvtier cache stat {report['tier_path']}`)")
    return "\n".join(lines)


def build_report(config: StorageBenchConfig, phases: dict[str, PhaseResult], tier_dir: Path,
                 tier_stats: dict[str, Any]) -> dict[str, Any]:
    """The report of one run: tier and raw sides per direction, ratios, break-even, config, device."""
    layout = config.layout
    report: dict[str, Any] = {}
    report |= direction("write_", phases["tier_write"], "write")
    report |= direction("raw_write_", phases["raw_write"], "write")
    report |= direction("read_", phases["tier_mixed"], "read")
    report |= direction("raw_read_", phases["raw_mixed"], "read")
    report |= {k: v for k, v in direction("mixed_write_", phases["tier_mixed"], "write").items()
               if k.endswith(("gbps", "ops"))}
    report |= {k: v for k, v in direction("raw_mixed_write_", phases["raw_mixed"], "write").items()
               if k.endswith(("gbps", "ops"))}
    report["write_ratio"] = ratio(report["write_gbps"], report["raw_write_gbps"])
    report["read_ratio"] = ratio(report["read_gbps"], report["raw_read_gbps"])
    report["write_ratio_rounds"] = round_ratios(phases["tier_write"], phases["raw_write"])
    report["read_ratio_rounds"] = round_ratios(phases["tier_mixed"], phases["raw_mixed"])
    report["write_ratio_ci95"] = ratio_interval(phases["tier_write"], phases["raw_write"], "write")
    report["read_ratio_ci95"] = ratio_interval(phases["tier_mixed"], phases["raw_mixed"], "read")
    report["misses"] = sum(p.misses for name, p in phases.items() if name.startswith("tier"))
    report["rejected"] = sum(p.rejected for name, p in phases.items() if name.startswith("tier"))
    report["phase_wall_s"] = {name: p.wall_s for name, p in phases.items()}
    report |= break_even(layout.bytes_per_token, report["read_gbps"])
    report["raw_prefix_load_ms"] = break_even(layout.bytes_per_token, report["raw_read_gbps"])["prefix_load_ms"]
    report["tier_stats"] = tier_stats
    report["tier_path"] = str(tier_dir) if config.keep else None
    report["page_cache"] = "flushed and dropped (fdatasync + POSIX_FADV_DONTNEED) after every slice, both sides"
    calibration = ("CALIBRATION: the tier side is plain files too, so every ratio would be 1.0 on a steady "
                   "disk; its distance from 1.0 is the noise floor of the ratios. ")
    report["method"] = (calibration if config.calibrate else "") + (
                        "write_*: the write phase (spills only); read_*: read bytes / wall time of the mixed phase, "
                        "which also spills at 1 - read_ratio (use --read-ratio 1 for reads alone); GB/s are 1e9 "
                        "bytes of uncompressed block payload; raw_* replay exactly the same ops; each phase starts with "
                        "an untimed warm-up round")
    report["config"] = {
        "path": str(config.path), "block_bytes": layout.page_size_bytes, "block_size": layout.block_size,
        "layout": layout.to_dict(), "concurrency": config.concurrency,
        "rounds": config.rounds, "warmup_rounds": WARMUP_ROUNDS,
        "codec": config.codec, "fsync": config.fsync, "duration_s": config.duration_s,
        "read_ratio": config.workload.read_ratio, "keep": config.keep, "workload": asdict(config.workload),
        "api": config.api, "calibrate": config.calibrate,
        "native_io": native_built()}  # the tier did its file I/O through _fileio.c (tiers/disk/fileio.py)
    report["device"] = device_facts(config.path)
    return report
