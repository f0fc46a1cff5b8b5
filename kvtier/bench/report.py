"""Turn timed phases into the storage-bench report: GB/s, IOPS, latency, ratios to fio and python, disk writes.

Keys: `write_*`, `read_*` (reads alone) and `mixed_*` are the tier's; `python_*`, `fio_buffered_*` and
`fio_direct_*` the other sides'. `write_ratio` and `read_ratio` are the tier's GB/s over the ceiling's,
the better fio mode of that phase (`*_ceiling` names it; python when fio did not run).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtier.bench.diskstats import BlockCounts, per_op
from kvtier.bench.facts import device_facts
from kvtier.bench.round_stats import WARMUP_ROUNDS, ratio_interval, round_ratios
from kvtier.bench.runner import PhaseResult
from kvtier.bench.table import format_table
from kvtier.tiers.disk.fileio import native_built
from kvtier.transfer.latency import percentile_ms

if TYPE_CHECKING:
    from kvtier.bench.storage import StorageBenchConfig

__all__ = ["build_report", "format_table"]
PREFIX_TOKENS = (1024, 8192, 32768)
SIDES = ("tier", "python", "fio_buffered", "fio_direct")
FIO_SIDES = SIDES[2:]


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


def side_rows(phases: dict[str, PhaseResult]) -> dict[str, Any]:
    """Every side's directions: `[<side>_]write_*`, `read_*`, `mixed_read_*`, `mixed_write_gbps/ops`."""
    report: dict[str, Any] = {}
    for side in SIDES:
        prefix = "" if side == "tier" else f"{side}_"
        for phase, kind in (("write", "write"), ("read", "read"), ("mixed", "read")):
            if f"{side}_{phase}" in phases:
                label = f"{prefix}mixed_read_" if phase == "mixed" else f"{prefix}{phase}_"
                report |= direction(label, phases[f"{side}_{phase}"], kind)
        if f"{side}_mixed" in phases:
            report |= {k: v for k, v in direction(f"{prefix}mixed_write_", phases[f"{side}_mixed"], "write").items()
                       if k.endswith(("gbps", "ops"))}
    # NOTE: `raw_*` is what python_* was called while plain Python I/O was (wrongly) the ceiling
    report |= {"raw_" + k.removeprefix("python_"): v for k, v in list(report.items()) if k.startswith("python_")}
    return report


def ceiling_of(phases: dict[str, PhaseResult], phase: str) -> str:
    """The fio mode with the higher GB/s in `phase`, or python when no fio side ran."""
    fio = [s for s in FIO_SIDES if f"{s}_{phase}" in phases]
    return max(fio, key=lambda s: phases[f"{s}_{phase}"].gbps(phase)) if fio else "python"


def ratios(phases: dict[str, PhaseResult], phase: str, kind: str, against: str, key: str) -> dict[str, Any]:
    """`key`: tier GB/s over `against`'s in `phase`, with its per-round spread and 95% interval."""
    tier, other = phases[f"tier_{phase}"], phases[f"{against}_{phase}"]
    return {key: ratio(tier.gbps(kind), other.gbps(kind)), f"{key}_rounds": round_ratios(tier, other),
            f"{key}_ci95": ratio_interval(tier, other, kind)}


def block_io(phases: dict[str, PhaseResult], block_writes: dict[str, BlockCounts],
             device: str | None) -> dict[str, Any]:
    """Block-layer write I/Os and bytes per block op, per side and phase (None where not counted)."""
    out: dict[str, Any] = {"device": device}
    for key, phase in phases.items():
        side, name = key.rsplit("_", 1)
        num_ops = sum(len(v) for v in phase.latencies_s.values())
        out.setdefault(side, {})[name] = per_op(block_writes.get(key), num_ops)
    return out


def build_report(config: StorageBenchConfig, phases: dict[str, PhaseResult], tier_dir: Path,
                 tier_stats: dict[str, Any], *, fio: dict[str, Any], block_writes: dict[str, BlockCounts],
                 device: str | None) -> dict[str, Any]:
    """The report of one run: every side per direction, ratios, disk writes, break-even, config, device."""
    layout = config.layout
    report = side_rows(phases)
    for phase in ("write", "read"):
        report[f"{phase}_ceiling"] = ceiling_of(phases, phase)
        report |= ratios(phases, phase, phase, report[f"{phase}_ceiling"], f"{phase}_ratio")
        report |= ratios(phases, phase, phase, "python", f"{phase}_python_ratio")
    report |= ratios(phases, "mixed", "read", "python", "mixed_read_ratio")
    report["misses"] = sum(p.misses for name, p in phases.items() if name.startswith("tier"))
    report["rejected"] = sum(p.rejected for name, p in phases.items() if name.startswith("tier"))
    report["phase_wall_s"] = {name: p.wall_s for name, p in phases.items()}
    report |= break_even(layout.bytes_per_token, report["read_gbps"])
    ceiling_gbps = report[f"{report['read_ceiling']}_read_gbps"]
    report["ceiling_prefix_load_ms"] = break_even(layout.bytes_per_token, ceiling_gbps)["prefix_load_ms"]
    report["block_io"] = block_io(phases, block_writes, device)
    report["fio"] = fio
    report["tier_stats"] = tier_stats
    report["tier_path"] = str(tier_dir) if config.keep else None
    report["page_cache"] = ("flushed and dropped (fdatasync + POSIX_FADV_DONTNEED) after every slice, every side, "
                            "then syncfs; fio with invalidate=0 (it would invalidate at every open)")
    calibration = ("CALIBRATION: the tier side is plain files too, so tier/python would be 1.0 on a steady "
                   "disk; its distance from 1.0 is the noise floor of the ratios. ")
    report["method"] = (calibration if config.calibrate else "") + (
        "write_*: the write phase (spills only); read_*: the read phase (prefix reads of written blocks alone); "
        "mixed_*: reads and spills at read_ratio (tier and python only); GB/s are 1e9 bytes of uncompressed block "
        "payload; every other side replays exactly the tier's or python's ops in the same rounds; fio: one file per "
        "object, its files under the run's folder, latencies its clat (the read()/write() call alone, no open, "
        "fsync or close), wall its runtime (1 ms resolution); block_io: /proc/diskstats deltas over each side's "
        "slices, flush and syncfs included; each phase starts with an untimed warm-up round")
    report["config"] = {
        "path": str(config.path), "block_bytes": layout.page_size_bytes, "block_size": layout.block_size,
        "layout": layout.to_dict(), "concurrency": config.concurrency,
        "rounds": config.rounds, "warmup_rounds": WARMUP_ROUNDS,
        "codec": config.codec, "fsync": config.fsync, "duration_s": config.duration_s,
        "read_ratio": config.workload.read_ratio, "keep": config.keep, "workload": asdict(config.workload),
        "api": config.api, "calibrate": config.calibrate, "fio": config.fio, "direct_io": config.direct_io,
        "native_io": native_built()}  # the tier did its file I/O through _fileio.c (tiers/disk/fileio.py)
    report["device"] = device_facts(config.path)
    return report
