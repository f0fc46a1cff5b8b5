"""The next token from a sequence's logits: greedy, or temperature with top-k and top-p, drawn from
the request's own generator so a seed reproduces the draw whatever else is in the batch."""
from __future__ import annotations

import torch

from kvtier.engine.request import SamplingParams


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """A token id from `logits` `[vocab]` (float32)."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_k:
        kth = torch.topk(probs, min(params.top_k, probs.numel())).values[-1]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < params.top_p * ordered.sum()  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, ordered * keep)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def generator_for(params: SamplingParams) -> torch.Generator | None:
    """The request's generator: seeded when it has a seed, else a fresh random one (None when greedy)."""
    if params.temperature == 0:
        return None
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator
