"""`kvtier generate --model M --prompts IN.jsonl [--output OUT.jsonl]`: run requests on the engine
(format in kvtier/engine/jsonl.py); results on stdout or --output, progress on stderr."""
from __future__ import annotations

import argparse
import json
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
    add_cache_flags(parser, device_blocks=1024, host_blocks=1024)
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from kvtier.cli.model_flags import load_model_flags
    from kvtier.errors import KVTierError

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

    text = sys.stdin.read() if args.prompts == "-" else open(args.prompts, encoding="utf-8").read()
    parsed = [parse_line(line, n, tokenizer) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    cache = TieredKVCache.from_config(config)
    engine = LLMEngine(model, cache, EngineConfig(max_num_seqs=args.max_seqs,
                                                  max_num_batched_tokens=args.max_batched_tokens))
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
