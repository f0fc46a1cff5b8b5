"""transformers' generate with kvtier's TieredCache against DynamicCache, same model, same run.

Run: .venv/bin/python benches/bench_hf_cache.py [--preset smollm2-135m] [--prompt-len 1024] [--new-tokens 32]
     [--block-size 16] [--json]
"""
import argparse
import json

from kvtier.bench.hf_cache import hf_cache_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    parser.add_argument("--folder", help="where the disk tier lives (default: the temp folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    row = hf_cache_bench(args.preset, args.prompt_len, args.new_tokens, args.rounds, args.folder, args.block_size)
    if args.json:
        print(json.dumps(row))
        return
    for name, ratio in row["ratio_to_dynamic_median"].items():
        print(f"{name}: {[round(s, 2) for s in row['seconds'][name]]} s against DynamicCache "
              f"{[round(s, 2) for s in row['seconds']['dynamic']]} s, median ratio {ratio:.2f} "
              f"(CPU time: {row['cpu_ratio_to_dynamic_median'][name]:.2f})")


if __name__ == "__main__":
    main()
