"""`kvtier generate`'s files: one request per JSON line in, one result per line out.

In:  {"id", "prompt_token_ids" | "prompt" (with a tokenizer), "max_tokens", "stop_token_ids"?,
      "temperature"?, "top_k"?, "top_p"?, "seed"?, "cache_salt"?}
Out: {"id", "token_ids", "finish_reason", "num_cached_tokens", "ttft_s", "text"?} or {"id", "error"}
A line that cannot become a request gets its error line; the others still run.
"""
from __future__ import annotations

import json
from typing import Any

from kvtier.engine.request import Request, RequestOutput, SamplingParams

KEYS = {"id", "prompt_token_ids", "prompt", "max_tokens", "stop_token_ids", "temperature", "top_k", "top_p",
        "seed", "cache_salt"}


def parse_line(line: str, line_number: int, tokenizer: Any | None = None) -> Request | RequestOutput:
    """The Request a line describes, or a RequestOutput carrying the error that stops it."""
    request_id = f"line-{line_number}"
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"a request is a JSON object, got {type(data).__name__}")
        request_id = str(data.get("id", request_id))
        unknown = sorted(set(data) - KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; known keys are {sorted(KEYS)}")
        return Request(request_id=request_id, prompt_token_ids=_prompt(data, tokenizer),
                       max_tokens=data.get("max_tokens", 16), stop_token_ids=tuple(data.get("stop_token_ids", ())),
                       cache_salt=data.get("cache_salt"),
                       sampling=SamplingParams(temperature=data.get("temperature", 0.0), top_k=data.get("top_k", 0),
                                               top_p=data.get("top_p", 1.0), seed=data.get("seed")))
    except (ValueError, TypeError) as exc:
        return RequestOutput(request_id, error=f"line {line_number}: {exc}")


def result_dict(output: RequestOutput, tokenizer: Any | None = None) -> dict[str, Any]:
    """One result line: the error alone, or the tokens, why they stopped, the cache hits and TTFT."""
    if output.error is not None:
        return {"id": output.request_id, "error": output.error}
    result: dict[str, Any] = {"id": output.request_id, "token_ids": output.token_ids,
                              "finish_reason": output.finish_reason, "num_cached_tokens": output.num_cached_tokens,
                              "ttft_s": output.ttft_s, "cached_blocks_by_tier": output.cached_blocks_by_tier}
    if tokenizer is not None:
        result["text"] = tokenizer.decode(output.token_ids, skip_special_tokens=True)
    return result


def _prompt(data: dict[str, Any], tokenizer: Any | None) -> tuple[int, ...]:
    if "prompt_token_ids" in data:
        tokens = data["prompt_token_ids"]
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ValueError("prompt_token_ids must be a list of integers")
        return tuple(tokens)
    if "prompt" in data:
        if tokenizer is None:
            raise ValueError('"prompt" text needs a model folder with a tokenizer; send "prompt_token_ids"')
        return tuple(tokenizer.encode(str(data["prompt"])))
    raise ValueError('a request needs "prompt_token_ids" (or "prompt" with a tokenizer)')
