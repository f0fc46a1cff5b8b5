"""GPU check (issue 3): gpu tests, copy bandwidths, paged decode and block transfers, in one command.

    python benches/gpu_check.py --out gpu_check.json        # on a CUDA machine, under 5 minutes
    python benches/gpu_check.py --dry-run --out /tmp/x.json  # CPU: tiny shapes, Triton interpreter
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the harness is benches.gpu, repository tooling, not installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes, no GPU needed")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu tests")
    parser.add_argument("--sweep", action="store_true",
                        help="also time paged decode over tile/warp/stage/occupancy variants")
    parser.add_argument("--slow-tests", action="store_true", help="include slow-marked gpu tests")
    args = parser.parse_args(argv)
    if args.dry_run:  # the Triton code runs on CPU tensors; set before anything imports triton
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from benches.gpu.check import run_check, save_json
    from benches.gpu.table import format_table
    report = run_check(dry_run=args.dry_run, repo=REPO, include_slow_tests=args.slow_tests,
                       run_tests=not args.skip_tests, sweep=args.sweep)
    save_json(report, args.out)
    print(format_table(report))
    tests = report["gpu_tests"]
    return 1 if tests.get("ran") and tests.get("returncode") not in (0, None) else 0


if __name__ == "__main__":
    sys.exit(main())
