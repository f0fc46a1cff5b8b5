"""`kvtier bench storage|codec|replay`: argument parsing and printing; the measuring lives in kvtier.bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtier.errors import KVTierError
from kvtier.presets import MODEL_PRESET_NAMES

if TYPE_CHECKING:
    from kvtier.config import KVLayout


def register(commands: Any) -> None:
    parser = commands.add_parser("bench", help="measure storage tiers, codecs and a synthetic replay "
                                 "(see `kvtier bench -h`)")
    benches = parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    _register_storage(benches)
    _register_codec(benches)
    _register_parallel(benches)
    _register_serve(benches)
    from kvtier.cli import replay

    replay.register(benches)


def _register_storage(benches: Any) -> None:
    p = benches.add_parser(
        "storage", help="KV-offload I/O through the disk tier against fio (the ceiling) and plain Python file I/O",
        description="Write one-block objects, read prefix bursts of them with Zipf reuse (reads alone, page cache "
                    "dropped), then mix those reads with new spills, through the disk tier's public API; in the same "
                    "alternating rounds replay exactly the same objects as plain Python buffered file I/O and, when "
                    "fio is installed, as fio jobs (one file per object, buffered and O_DIRECT) at the same "
                    "concurrency on the same filesystem; report GB/s, IOPS, latency percentiles, block-layer "
                    "writes per op, tier/fio (the better mode) and tier/python ratios and the prefix-load break-even.")
    p.add_argument("--path", type=Path, required=True, help="folder to benchmark (a fresh subfolder is used)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--block-bytes", type=int, help="bytes per block (a 1-layer fp16 layout of that size)")
    size.add_argument("--model-preset", choices=MODEL_PRESET_NAMES,
                      help="size blocks from a model's KV shape (default llama-3-8b: 2 MiB at 16 tokens)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--read-ratio", type=float, default=0.8,
                   help="share of the mixed phase's blocks that are reads, 0..1 (default 0.8)")
    p.add_argument("--concurrency", type=int, default=4, help="threads issuing block ops (default 4)")
    p.add_argument("--codec", choices=("raw", "zstd"), default="raw", help="tier payload codec (default raw)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of time-boxed I/O, a third each to writes, reads and the mixed phase; each replay "
                        "(python, fio buffered, fio O_DIRECT) adds about as much again, every fio run about 0.2 s of "
                        "start-up, the warm-up rounds a little more (default 10)")
    p.add_argument("--api", choices=("sync", "async"), default="sync",
                   help="drive the tier's sync API on threads or its asyncio API on one loop (default sync)")
    p.add_argument("--rounds", type=int, default=16,
                   help="timed slices per phase, alternating whether tier or python leads, after one untimed "
                        "warm-up round (default 16)")
    p.add_argument("--no-fsync", action="store_true", help="skip fsync in the tier, python and fio alike")
    p.add_argument("--direct-io", action="store_true",
                   help="run the tier in its O_DIRECT mode (page-aligned objects, no page cache); python stays "
                        "buffered, fio runs both modes either way")
    p.add_argument("--no-fio", action="store_true",
                   help="leave fio out (it runs when on PATH); the ratios are then against python alone")
    p.add_argument("--calibrate", action="store_true",
                   help="put plain files in the tier's place too: tier/python then shows this disk's noise floor "
                        "(1.0 on a steady disk); run it beside a real run before trusting a small difference")
    p.add_argument("--max-bytes", type=int, help="cap on bytes the tier writes, each other side as much "
                   "(default min(16 GiB, free space / (2 x the sides that write)))")
    p.add_argument("--seed", type=int, default=0, help="trace and data seed (default 0)")
    p.add_argument("--keep", action="store_true", help="leave the tier's objects (for `kvtier cache`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_storage, parser=p)


def _register_codec(benches: Any) -> None:
    p = benches.add_parser("codec", help="compression ratio and GB/s of the block codecs on fp16/bf16 data")
    p.add_argument("--model-preset", choices=MODEL_PRESET_NAMES, default="llama-3-8b",
                   help="block shape to encode (default llama-3-8b)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--repeat", type=int, default=20, help="encodes and decodes per case (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.set_defaults(func=run_codec, parser=p)


def storage_layout(args: argparse.Namespace) -> KVLayout:
    """The layout named by --block-bytes or --model-preset (llama-3-8b when neither)."""
    from kvtier.bench.storage import layout_for_block_bytes
    from kvtier.config import ModelConfig

    if args.block_bytes is not None:
        return layout_for_block_bytes(args.block_bytes, args.block_size)
    if args.block_size < 1:
        raise ValueError(f"--block-size must be >= 1 token, got {args.block_size}")
    return ModelConfig.preset(args.model_preset or "llama-3-8b").kv_layout(args.block_size)


def run_storage(args: argparse.Namespace) -> int:
    from kvtier.bench.report import format_table
    from kvtier.bench.storage import StorageBenchConfig, run_storage_bench
    from kvtier.bench.workload import WorkloadConfig

    try:
        layout = storage_layout(args)
        config = StorageBenchConfig(
            path=args.path, layout=layout, concurrency=args.concurrency, codec=args.codec,
            fsync=not args.no_fsync, duration_s=args.duration, rounds=args.rounds, keep=args.keep,
            max_bytes=args.max_bytes, api=args.api, calibrate=args.calibrate, fio=not args.no_fio,
            direct_io=args.direct_io,
            workload=WorkloadConfig(block_size=layout.block_size, read_ratio=args.read_ratio, seed=args.seed),
            progress=not args.json and sys.stderr.isatty())
        report = run_storage_bench(config)
    except ValueError as exc:
        args.parser.error(str(exc))
    except (KVTierError, OSError, ImportError) as exc:
        print(f"kvtier bench storage: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def run_codec(args: argparse.Namespace) -> int:
    from kvtier.bench.codec import codec_report
    from kvtier.config import ModelConfig

    if args.repeat < 1 or args.block_size < 1:
        args.parser.error(f"--repeat and --block-size must be >= 1, got {args.repeat} and {args.block_size}")
    rows = codec_report(ModelConfig.preset(args.model_preset), args.block_size, args.repeat)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['codec']:>5} {row['dtype']:>9}: ratio {row['ratio']:.3f}, encode "
                  f"{row['encode_gbps']:.2f} GB/s, decode {row['decode_gbps']:.2f} GB/s "
                  f"({row['block_bytes']} B blocks)")
    return 0


def _register_parallel(benches: Any) -> None:
    from kvtier.bench.parallel import LAYOUTS, ParallelBenchConfig

    d = ParallelBenchConfig()
    p = benches.add_parser(
        "parallel", help="one multi-turn chat workload at TP=1, TP=2, PP=2 and DP=2, side by side",
        description="Serve the same multi-turn chats (a shared system prompt, then turns whose history comes "
                    "back from the tiered cache) with the model whole, tensor-parallel, pipeline-parallel, and "
                    "as two data-parallel engines sharing one cache folder; report output tokens/s, TTFT and ITL "
                    "per layout and which served best. Replies are checked identical across layouts.")
    p.add_argument("--model", default=d.model, help=f"a preset or a model folder (default {d.model}: random weights)")
    p.add_argument("--dtype", default=d.dtype, help=f"(default {d.dtype})")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated (default {','.join(LAYOUTS)})")
    for name in ("conversations", "turns", "system_tokens", "user_tokens", "reply_tokens", "device_blocks",
                 "host_blocks"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=f"(default {getattr(d, name)})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_parallel, parser=p)


def _run_parallel(args: argparse.Namespace) -> int:
    from kvtier.bench.parallel import ParallelBenchConfig, format_table, run_parallel_bench

    try:
        config = ParallelBenchConfig(
            model=args.model, dtype=args.dtype, layouts=tuple(x for x in args.layouts.split(",") if x),
            **{name: getattr(args, name) for name in ("conversations", "turns", "system_tokens", "user_tokens",
                                                      "reply_tokens", "device_blocks", "host_blocks")})
    except ValueError as exc:
        args.parser.error(str(exc))
    try:
        report = run_parallel_bench(config)
    except KVTierError as exc:
        print(f"kvtier bench parallel: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else format_table(report))
    return 0 if report["replies_match"] else 1


def _register_serve(benches: Any) -> None:
    from kvtier.bench.serve import ServeBenchConfig

    d = ServeBenchConfig()
    p = benches.add_parser(
        "serve", help="a multi-turn chat workload through the engine, tiering on and off (AIPerf's metrics)",
        description="Replay multi-turn chats (synthetic, or --workload FILE.jsonl) through the engine at a "
                    "concurrency or a request rate, with tiering on (host RAM and a disk folder below the device "
                    "pool) and off; report time_to_first_token, inter_token_latency and request_latency (p50, "
                    "p90, p99), output_token_throughput and request_throughput side by side.")
    p.add_argument("--model", default=d.model, help=f"(default {d.model}, the demo model)")
    p.add_argument("--dtype", default=d.dtype)
    for name in ("conversations", "turns", "system_tokens", "user_tokens", "reply_tokens", "concurrency",
                 "device_blocks", "host_blocks", "block_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=f"(default {getattr(d, name)})")
    p.add_argument("--request-rate", type=float, help="conversation starts per second, Poisson (default: "
                   "--concurrency conversations in flight)")
    p.add_argument("--workload", metavar="FILE.jsonl", help='conversations, one per line: {"turns": [[ids], ...], '
                   '"max_tokens": N}')
    p.add_argument("--remote", metavar="URL", help="also a Redis tier below the disk (tiering on): redis://, "
                   "rediss:// (TLS) or unix://; a password in the URL or $KVTIER_REDIS_PASSWORD")
    p.add_argument("--remote-ca", metavar="PEM", help="with rediss://: the CA bundle that signed the server's "
                   "certificate (default: the system's CAs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="a latency CDF and a bar per configuration (matplotlib)")
    p.set_defaults(func=_run_serve, parser=p)


def _run_serve(args: argparse.Namespace) -> int:
    from kvtier.bench.serve import ServeBenchConfig, format_table, plot, run_serve_bench

    names = ("model", "dtype", "conversations", "turns", "system_tokens", "user_tokens", "reply_tokens",
             "concurrency", "request_rate", "device_blocks", "host_blocks", "block_size", "workload", "remote", "remote_ca")
    try:
        config = ServeBenchConfig(**{name: getattr(args, name) for name in names})
    except ValueError as exc:
        args.parser.error(str(exc))
    try:
        report = run_serve_bench(config)
        if args.plot:
            plot(report, args.plot)
    except (KVTierError, ValueError, OSError) as exc:
        print(f"kvtier bench serve: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    else:
        print(format_table(report))
    return 0 if report["replies_match"] else 1
