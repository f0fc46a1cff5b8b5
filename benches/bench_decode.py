"""Decode tokens/s of the engine against transformers' generate, same weights, same run.

Run: .venv/bin/python benches/bench_decode.py [--preset smollm2-135m] [--batch 1 8] [--scenario equal varied] [--json]
"""
import argparse
import json

from kvtier.bench.decode import decode_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", nargs="+", choices=["equal", "varied"], default=["equal", "varied"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for scenario, batch in ((s, b) for s in args.scenario for b in args.batch):
        row = decode_bench(args.preset, batch, args.prompt_len, args.new_tokens, args.rounds, scenario)
        print(json.dumps(row) if args.json else
              f"{scenario} batch {batch}: kvtier {[round(x, 1) for x in row['kvtier_tok_s']]} tok/s, transformers "
              f"{[round(x, 1) for x in row['transformers_tok_s']]} tok/s, median ratio {row['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
