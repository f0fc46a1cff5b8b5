"""`kvtier generate --model M --prompts IN.jsonl [--output OUT.jsonl]`: run requests on the engine
(format in kvtier/engine/jsonl.py); results on stdout or --output, progress on stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from kvtier.cli.cache_flags import add_cache_flags, cache_config


def register(commands: Any) -> None:
    parser = commands.add_parser("generate", help="run JSONL requests on a model over the tiered cache")
    parser.add_argument("--model", required=True, help="a HuggingFace folder, a .gguf file (converted once under "
                        "$KVTIER_CACHE_DIR or ~/.cache/kvtier), a bundled model (smollm2-135m-instruct) or a preset")
    parser.add_argument("--prompts", required=True, metavar="IN.jsonl", help="one request per line ('-': stdin)")
    parser.add_argument("--output", metavar="OUT.jsonl", help="results, one per line (default: stdout)")
    parser.add_argument("--dtype", help="compute and cache dtype (default: the checkpoint's)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    parser.add_argument("--max-batched-tokens", type=int, default=512, help="token budget of one step (default 512)")
    parser.add_argument("--max-seqs", type=int, default=16, help="sequences in flight at most (default 16)")
    parser.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel ranks per pipeline stage "
                        "(spawned here, or one per torchrun process; default 1)")
    parser.add_argument("--pp", type=int, default=1, metavar="M", help="pipeline-parallel stages (default 1)")
    add_cache_flags(parser, device_blocks=1024, host_blocks=1024)
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from kvtier.cli.model_flags import load_model_flags
    from kvtier.errors import KVTierError

    if args.tp < 1 or args.pp < 1:
        args.parser.error(f"--tp and --pp must be integers >= 1, got {args.tp} and {args.pp}")
    try:
        model, tokenizer = load_model_flags(args)
    except (ValueError, OSError) as exc:
        args.parser.error(str(exc))
    except KVTierError as exc:
        print(f"kvtier generate: error: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kvtier-generate-") as scratch:
        try:
            config = cache_config(args, model.config.kv_layout(args.block_size), scratch)
        except (ValueError, OSError) as exc:
            args.parser.error(str(exc))
        try:
            return _serve(args, model, tokenizer, config)
        except KVTierError as exc:
            print(f"kvtier generate: error: {exc}", file=sys.stderr)
            return 1


def _serve(args: argparse.Namespace, model: Any, tokenizer: Any, config: Any) -> int:
    from tqdm import tqdm

    from kvtier.cache import TieredKVCache
    from kvtier.engine.engine import EngineConfig, LLMEngine
    from kvtier.engine.jsonl import parse_line, result_dict
    from kvtier.engine.request import Request
    from kvtier.parallel.rank_cache import other_layout_tiers

    text = sys.stdin.read() if args.prompts == "-" else open(args.prompts, encoding="utf-8").read()
    parsed = [parse_line(line, n, tokenizer) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    engine_config = EngineConfig(max_num_seqs=args.max_seqs, max_num_batched_tokens=args.max_batched_tokens)
    if args.tp * args.pp > 1:
        outputs = _serve_parallel(args, model, parsed, config, engine_config)
        if os.environ.get("RANK", "0") != "0":  # NOTE: under torchrun rank 0 alone writes the results
            return 0
    else:
        cache = TieredKVCache.from_config(config, read_tiers=other_layout_tiers(config, config.layout))
        engine = LLMEngine(model, cache, engine_config)
        try:
            outputs = [engine.add_request(item) if isinstance(item, Request) else item for item in parsed]
            with tqdm(total=len(outputs), desc="requests", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
                while engine.has_unfinished():
                    bar.update(len(engine.step()))
        finally:
            cache.close()
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for output in outputs:
            out.write(json.dumps(result_dict(output, tokenizer)) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _serve_parallel(args: argparse.Namespace, model: Any, parsed: list[Any], config: Any,
                    engine_config: Any) -> list[Any]:
    """The outputs of `parsed` (requests, and the error outputs of lines that are not) run on --tp x --pp ranks."""
    from kvtier.cli.model_flags import resolve_model
    from kvtier.engine.request import Request
    from kvtier.parallel.serve import GenerateJob, generate_parallel
    from kvtier.parallel.shards import ParallelConfig, rank_shard

    parallel = ParallelConfig(tp_size=args.tp, pp_size=args.pp)
    rank_shard(model.config, parallel, 0)  # NOTE: a layout the model cannot take is refused before any rank starts
    requests = tuple(item for item in parsed if isinstance(item, Request))
    job = GenerateJob(model=resolve_model(args.model, args.dtype), requests=requests, cache=config,
                      engine=engine_config, dtype=args.dtype)
    outputs = generate_parallel(job, parallel, device=args.device).outputs if requests else []
    if requests and not outputs:  # a torchrun rank other than 0: rank 0 reports
        return []
    ran = iter(outputs)
    return [next(ran) if isinstance(item, Request) else item for item in parsed]
