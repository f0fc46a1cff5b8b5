"""Warm restart of a disk tier: time to rebuild the index of N objects from the folder alone.

Run: .venv/bin/python benches/bench_restart.py --objects 100000 --path /tmp/kvtier-restart [--json]
"""
import argparse
import json

from kvtier.bench.restart import measure_restart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--path", default="/tmp/kvtier-restart")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure_restart(args.path, args.objects, args.repeats)
    print(json.dumps(result) if args.json else
          f"{result['objects']} objects of {result['object_bytes']} B: index rebuild median "
          f"{result['restart_s']:.2f} s over {args.repeats} restarts "
          f"{[round(r, 2) for r in result['restart_all_s']]}; fill took {result['fill_s']:.1f} s")


if __name__ == "__main__":
    main()
