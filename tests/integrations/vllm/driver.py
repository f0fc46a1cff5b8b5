"""One vLLM engine (vLLM's CPU build, in its own venv) running prompts with or without kvtier's plug-in.

Run by tests/integrations/vllm/test_plugin.py and benches/bench_vllm.py as
`.venv-vllm/bin/python -m tests.integrations.vllm.driver SPEC.json` from the repository root.
SPEC: model, prompts (token id lists), rounds, max_tokens, kvtier (the plug-in's options, or
null for no connector), and optional files: ready (written when done), wait_for (read before the
first round), hold (read before exiting). Writes RESULT.json: per round, the tokens, the cached
token counts and the seconds of each prompt's call (with max_tokens=1: its time to first token); the plug-in's counters.
"""
from __future__ import annotations

import json
import os
import sys
import time

DEADLINE_S = 300.0


def wait_for_file(path: str, what: str) -> None:
    """Block until `path` exists (another process's event), failing after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {path} did not appear within {DEADLINE_S:.0f} s")
        time.sleep(0.05)


def wait_for_writes(stats_file: str) -> dict:
    """The plug-in's counters once every block it stored has reached the folder (or failed to)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            with open(stats_file) as f:
                stats = json.load(f)
            if stats["folder_writes"] + stats["folder_write_errors"] >= stats["stores"]:
                return stats
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the plug-in's writes did not finish within {DEADLINE_S:.0f} s")
        time.sleep(0.05)


def kv_transfer_config(options: dict) -> dict:
    """vLLM's kv_transfer_config for kvtier's plug-in with `options` (kv_connector_extra_config["kvtier"])."""
    return {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"spec_name": "KVTierSpec", "spec_module_path": "kvtier.integrations.vllm",
                                          "kvtier": options}}


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs = {} if spec.get("kvtier") is None else {"kv_transfer_config": kv_transfer_config(spec["kvtier"])}
    llm = LLM(model=spec["model"], skip_tokenizer_init=True, enforce_eager=True, dtype=spec.get("dtype", "auto"),
              max_model_len=spec.get("max_model_len", 2048), seed=0, **kwargs)
    if spec.get("wait_for"):
        wait_for_file(spec["wait_for"], "waiting for the other engine")
    params = SamplingParams(max_tokens=spec.get("max_tokens", 8), temperature=0)
    rounds = []
    for _ in range(spec.get("rounds", 1)):
        tokens, cached, seconds = [], [], []
        for prompt in spec["prompts"]:  # one at a time: each call's time is its prompt's own
            start = time.perf_counter()
            out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0]
            seconds.append(time.perf_counter() - start)
            tokens.append(list(out.outputs[0].token_ids))
            cached.append(out.num_cached_tokens)
        rounds.append({"tokens": tokens, "cached": cached, "seconds": seconds})
        llm.reset_prefix_cache()  # vLLM forgets its own copy; kvtier's stays
    stats = None
    if spec.get("kvtier") and spec["kvtier"].get("stats_file"):
        stats = wait_for_writes(spec["kvtier"]["stats_file"])
    with open(out_path, "w") as f:
        json.dump({"rounds": rounds, "stats": stats}, f)
    if spec.get("ready"):
        with open(spec["ready"], "w") as f:
            f.write("done\n")
    if spec.get("hold"):
        wait_for_file(spec["hold"], "waiting to be released")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
