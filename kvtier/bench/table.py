"""The storage-bench report as a plain, aligned table: every side per row, tier over fio and over python."""
from __future__ import annotations

from typing import Any

COLUMNS = (("tier", ""), ("python", "python_"), ("fio buf", "fio_buffered_"), ("fio direct", "fio_direct_"))
LABEL_WIDTH, WIDTH = 18, 11


def num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<{LABEL_WIDTH}}" + "".join(f"{c:>{WIDTH}}" for c in cells)


def _direction_rows(report: dict[str, Any], label: str, prefix: str, fio_ratio: str | None,
                    python_ratio: str) -> list[str]:
    """GB/s (with the two ratios), IOPS and p50/p90/p99 of one direction, one column per side."""
    def cells(field: str, fmt: str) -> list[str]:
        return [num(report.get(f"{side}{prefix}{field}"), fmt) for _, side in COLUMNS]

    rows = [_row(f"{label} GB/s", cells("gbps", ".3f") + [num(report.get(fio_ratio or ""), ".3f"),
                                                         num(report.get(python_ratio), ".3f")])]
    rows.append(_row(f"{label} IOPS", cells("iops", ".0f")))
    rows += [_row(f"{label} {q} ms", cells(f"{q}_ms", ".3f")) for q in ("p50", "p90", "p99")]
    return rows


def _block_rows(report: dict[str, Any], phase: str) -> list[str]:
    io = report["block_io"]
    sides = ("tier", "python", "fio_buffered", "fio_direct")

    def cells(field: str, scale: float, fmt: str) -> list[str]:
        values = [(io.get(side) or {}).get(phase, {}).get(field) for side in sides]
        return [num(None if v is None else v / scale, fmt) for v in values]

    return [_row(f"{phase} disk wr/op", cells("writes_per_op", 1, ".2f")),
            _row(f"{phase} disk KiB/op", cells("write_bytes_per_op", 1024, ".1f"))]


def _spread(report: dict[str, Any], key: str) -> str:
    r = report[f"{key}_rounds"]
    ci = report[f"{key}_ci95"]
    interval = f"{num(ci[0], '.3f')}-{num(ci[1], '.3f')}" if ci else "-"
    return f"median {num(r['median'], '.3f')} (quartiles {num(r['q1'], '.3f')}-{num(r['q3'], '.3f')}, 95% {interval})"


def header(report: dict[str, Any]) -> list[str]:
    cfg, fio = report["config"], report["fio"]
    lines = [(f"kvtier bench storage{' --calibrate (plain files on both sides)' if cfg['calibrate'] else ''}: "
              f"{cfg['block_bytes']} B blocks ({cfg['block_size']} tokens), codec {cfg['codec']}, "
              f"fsync {cfg['fsync']}, concurrency {cfg['concurrency']}, read ratio {cfg['read_ratio']} (mixed), "
              f"{'compiled' if cfg['native_io'] else 'Python'} file I/O"
              f"{', tier O_DIRECT' if report['tier_stats'].get('direct_io') else ''}, {report['device']['fs_type']} on "
              f"{report['block_io']['device'] or report['device']['device']} at {cfg['path']}")]
    if fio["modes"]:
        lines.append(f"ceiling: {fio['version']} ({', '.join(fio['modes'])}; psync, one file per object, "
                     f"{'fsync on close' if cfg['fsync'] else 'no fsync'}), the better mode per phase: write "
                     f"{report['write_ceiling']}, read {report['read_ceiling']}")
    skipped = "; ".join(f"fio {mode}: {why}" for mode, why in fio["skipped"].items())
    if skipped:
        lines.append(f"{skipped}{'; the ceiling is python' if not fio['modes'] else ''}")
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A plain, aligned table of the headline numbers."""
    lines = header(report)
    lines.append(_row("", [name for name, _ in COLUMNS] + ["tier/ceil", "tier/py"]))
    lines += _direction_rows(report, "write", "write_", "write_ratio", "write_python_ratio")
    lines += _block_rows(report, "write")
    lines += _direction_rows(report, "read", "read_", "read_ratio", "read_python_ratio")
    lines += _direction_rows(report, "mixed read", "mixed_read_", None, "mixed_read_ratio")
    lines.append(_row("mixed write GB/s", [num(report.get(f"{side}mixed_write_gbps"), ".3f") for _, side in COLUMNS]))
    lines.append(f"ratio per round ({report['write_ratio_rounds']['rounds']} rounds), tier/{report['write_ceiling']}: "
                 f"write {_spread(report, 'write_ratio')}; tier/{report['read_ceiling']}: read "
                 f"{_spread(report, 'read_ratio')}")
    lines.append(f"ratio per round, tier/python: write {_spread(report, 'write_python_ratio')}; read "
                 f"{_spread(report, 'read_python_ratio')}")
    if report["fio"]["modes"]:
        lines.append("fio latencies are its clat: the write() or read() call alone, without the open, fsync and close")
    loads = ", ".join(f"{n} tok {num(ms, '.1f')} ms" for n, ms in report["prefix_load_ms"].items())
    lines.append(f"misses {report['misses']}, rejected {report['rejected']}; {report['bytes_per_token']:.0f} "
                 f"bytes/token; prefix load at the tier's read GB/s: {loads}")
    if report["tier_path"]:
        lines.append(f"objects kept in {report['tier_path']} (try `kvtier cache stat {report['tier_path']}`)")
    return "\n".join(lines)
