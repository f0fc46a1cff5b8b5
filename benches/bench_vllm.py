"""Time to first token of long prompts in vLLM's CPU build: recomputed, from kvtier's host slots and from
kvtier's disk tier (page cache dropped), in alternating rounds of one engine; vLLM without any connector on
the same prompts; and the hit rate of a second engine started later on the same folder.

Run: .venv/bin/python benches/bench_vllm.py [--prompt-len 1920] [--prompts 2] [--rounds 3] [--folder DIR] [--json]
(needs `make vllm-venv`; the model is SmolLM2-135M's shape with seeded random weights, bfloat16).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("KVTIER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


# -- inside vLLM's venv: one engine ----------------------------------------------------------------

def drop_page_cache(folder: str) -> int:
    """Ask the kernel to forget the folder's cached pages (clean after fsync); returns the files."""
    count = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
            finally:
                os.close(fd)
    return count


def wait_for_writes(stats_file: str) -> dict:
    from tests.integrations.vllm.driver import wait_for_writes as wait
    return wait(stats_file)


def engine(spec: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tests.integrations.vllm.driver import kv_transfer_config

    kwargs = {} if spec["kvtier"] is None else {"kv_transfer_config": kv_transfer_config(spec["kvtier"])}
    start = time.perf_counter()
    llm = LLM(model=spec["model"], skip_tokenizer_init=True, enforce_eager=True, dtype="bfloat16",
              max_model_len=spec["prompt_len"] + 64, seed=0, **kwargs)
    startup = time.perf_counter() - start
    first = SamplingParams(max_tokens=1, temperature=0)

    def ttft(prompt: list[int]) -> tuple[float, int, list[int]]:
        start = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], first, use_tqdm=False)[0]
        return time.perf_counter() - start, out.num_cached_tokens, list(out.outputs[0].token_ids)

    llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])], first, use_tqdm=False)  # warm-up
    llm.reset_prefix_cache(reset_connector=spec["kvtier"] is not None)
    rows = []
    for prompts in spec["rounds"]:
        row: dict = {}
        for phase in spec["phases"]:
            if phase == "host":
                llm.reset_prefix_cache()  # vLLM forgets; kvtier's host slots keep the blocks
            elif phase == "disk":
                llm.reset_prefix_cache(reset_connector=True)  # host slots forgotten too: only the folder has them
                row["dropped_files"] = drop_page_cache(spec["kvtier"]["tier"]["path"])
            results = [ttft(p) for p in prompts]
            row[phase] = {"ttft_s": [r[0] for r in results], "cached": [r[1] for r in results],
                          "tokens": [r[2] for r in results]}
            if phase == "recompute" and spec["kvtier"] is not None:
                wait_for_writes(spec["kvtier"]["stats_file"])  # the disk phase reads what is on disk
            llm.reset_prefix_cache(reset_connector=spec["kvtier"] is not None and phase == "disk")
        rows.append(row)
    stats = None
    if spec["kvtier"] is not None:
        stats = wait_for_writes(spec["kvtier"]["stats_file"])
    return {"startup_s": startup, "rounds": rows, "stats": stats}


# -- in kvtier's venv: the run ---------------------------------------------------------------------

def make_model(path: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                                      rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                                      torch_dtype="bfloat16")
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)


def run_engine(spec: dict, work: Path, name: str) -> dict:
    spec_path, out_path = work / f"{name}.json", work / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    # NOTE: vLLM's CPU build keeps a core for its scheduler, and one more when a KV connector is set; on a
    # machine of two cores that leaves the plain engine one thread and the connector's engine two (it gives up
    # reserving). No reservation for either: the same threads compute in both.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    with open(work / f"{name}.log", "w") as log:
        rc = subprocess.run([str(VLLM_PYTHON), str(Path(__file__).resolve()), "--engine", str(spec_path),
                             str(out_path)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"engine {name} exited {rc}: see {work / f'{name}.log'}")
    return json.loads(out_path.read_text())


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1e3:.0f} ms (range {min(values) * 1e3:.0f}-{max(values) * 1e3:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=1920)
    parser.add_argument("--prompts", type=int, default=2, help="distinct prompts per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", help="the disk tier's folder (default: a new one in the temp folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engine", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        Path(args.engine[1]).write_text(json.dumps(engine(json.loads(Path(args.engine[0]).read_text()))))
        return
    if not VLLM_PYTHON.exists():
        sys.exit(f"vLLM's CPU build is not at {VLLM_PYTHON}: run `make vllm-venv`")
    work = Path(tempfile.mkdtemp(prefix="kvtier-bench-vllm-"))
    folder = Path(args.folder or work / "folder")
    make_model(work / "model")
    rng = random.Random(0)
    rounds = [[[rng.randrange(1, 49152) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
              for _ in range(args.rounds)]
    options = {"host_bytes": "1GiB", "tier": {"kind": "disk", "path": str(folder), "capacity_bytes": "8GiB"},
               "stats_file": str(work / "stats.json")}
    base = {"model": str(work / "model"), "prompt_len": args.prompt_len, "rounds": rounds}
    tiered = run_engine({**base, "kvtier": options, "phases": ["recompute", "host", "disk"]}, work, "kvtier")
    plain = run_engine({**base, "kvtier": None, "phases": ["recompute"]}, work, "plain")
    later = run_engine({**base, "kvtier": {**options, "stats_file": str(work / "later.json")}, "phases": ["later"]},
                       work, "later")
    same = all(tiered["rounds"][r][p]["tokens"] == plain["rounds"][r]["recompute"]["tokens"]
               == later["rounds"][r]["later"]["tokens"]
               for r in range(args.rounds) for p in ("recompute", "host", "disk"))
    ttft = {name: [t for row in run["rounds"] for t in row[phase]["ttft_s"]] for name, run, phase in (
        ("vllm_no_connector", plain, "recompute"), ("kvtier_recompute", tiered, "recompute"),
        ("kvtier_host", tiered, "host"), ("kvtier_disk_cold", tiered, "disk"), ("later_engine", later, "later"))}
    cached = [c for row in later["rounds"] for c in row["later"]["cached"]]
    result = {"prompt_len": args.prompt_len, "rounds": args.rounds, "prompts_per_round": args.prompts,
              "ttft_s": ttft, "same_tokens": same,
              "later_engine_hit_rate": sum(cached) / (args.prompt_len * len(cached)),
              "later_engine_cached_tokens": cached, "kvtier_stats": tiered["stats"], "later_stats": later["stats"],
              "startup_s": {"kvtier": tiered["startup_s"], "plain": plain["startup_s"], "later": later["startup_s"]},
              "folder": str(folder)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"prompt {args.prompt_len} tokens, {args.prompts} prompts x {args.rounds} rounds; same tokens in every "
          f"phase: {same}")
    for name, values in ttft.items():
        print(f"  TTFT {name:<18} {summary(values)}")
    print(f"  later engine: {result['later_engine_hit_rate']:.0%} of prompt tokens from the folder "
          f"({cached} of {args.prompt_len} each)")
    print(f"  counters: first engine {tiered['stats']}\n            later engine {later['stats']}")


if __name__ == "__main__":
    main()
