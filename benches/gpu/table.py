"""The GPU check's report as a fixed-width table: raw GB/s beside the fraction of copy bandwidth."""
from __future__ import annotations

from typing import Any


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
    step = report.get("model_step")
    if step:
        rows.append((step["name"], f"{step['step_ms']:.3f}", "", f"{step['fraction_of_roofline']:.0%} of roofline",
                     "", f"roofline {step['roofline_ms']:.3f} ms"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines += _sweep_lines(report.get("decode_sweep", []))
    tests = report["gpu_tests"]
    head = (f"device: {report['env']['device']}  torch {report['env']['torch']}  "
            f"triton {report['env']['triton']}  dry_run={report['dry_run']}  "
            f"took {report['elapsed_s']:.0f} s")
    return "\n".join([head, f"gpu tests: {tests.get('summary', 'not run')}", *lines])
