"""A prefix restored from the disk tier after a warm restart, against plain reads of the same files.

Run: .venv/bin/python benches/bench_restore.py [--preset smollm2-135m] [--tokens 4096] [--rounds 6] [--cold] [--json]
"""
import argparse
import json

from kvtier.bench.restore import restore_bench
from kvtier.config import ModelConfig
from kvtier.presets import MODEL_PRESET_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-135m", choices=MODEL_PRESET_NAMES)
    parser.add_argument("--tokens", type=int, default=4096, help="prefix tokens to restore (default 4096)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--folder", help="where the disk tier lives (default: the temp folder)")
    parser.add_argument("--cold", action="store_true", help="drop the objects from the page cache before each read")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    layout = ModelConfig.preset(args.preset).kv_layout(16)
    row = restore_bench(layout, args.tokens, args.rounds, args.folder, args.workers, args.cold)
    print(json.dumps(row) if args.json else
          f"{row['page_cache']} page cache, {row['prefix_tokens']} tokens ({row['bytes'] / 1e6:.0f} MB, "
          f"{row['blocks']} objects): restore "
          f"{[round(x * 1e3, 1) for x in row['restore_s']]} ms, floor {[round(x * 1e3, 1) for x in row['floor_s']]} "
          f"ms, ratio median {row['ratio_median']:.2f} (range {row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f})")


if __name__ == "__main__":
    main()
