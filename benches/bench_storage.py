"""Storage bench at 256 KiB, 1 MiB and 2 MiB blocks: one JSON line per size (stdout and --out).

    python benches/bench_storage.py --path /mnt/nvme/scratch [--duration 10] [--codec raw] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvtier.bench.report import format_table
from kvtier.bench.storage import (
    StorageBenchConfig,
    layout_for_block_bytes,
    run_storage_bench,
)
from kvtier.bench.workload import WorkloadConfig

SIZES = (256 << 10, 1 << 20, 2 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--read-ratio", type=float, default=0.8)
    parser.add_argument("--codec", choices=("raw", "zstd"), default="raw")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_storage.jsonl"))
    args = parser.parse_args()
    with args.out.open("a", encoding="utf-8") as out:
        for block_bytes in SIZES:
            config = StorageBenchConfig(
                path=args.path, layout=layout_for_block_bytes(block_bytes), concurrency=args.concurrency,
                codec=args.codec, fsync=not args.no_fsync, duration_s=args.duration,
                workload=WorkloadConfig(read_ratio=args.read_ratio))
            report = run_storage_bench(config)
            print(format_table(report), flush=True)
            out.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
