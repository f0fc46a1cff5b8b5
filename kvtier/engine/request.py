"""What a caller asks for (Request, SamplingParams) and what it gets back (RequestOutput)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "context"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 keep every token; `seed` makes a draw reproducible."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A prompt of token ids to continue, with its limits; `cache_salt` keeps a tenant's blocks its own."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids must not be empty")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.prompt_token_ids):
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids must be integers >= 0")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"request {self.request_id!r}: max_tokens must be an integer >= 1, "
                             f"got {self.max_tokens!r}")


@dataclass(slots=True)
class RequestOutput:
    """The generated tokens, why they stopped, what the cache served, and timings (seconds)."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0
    cached_blocks_by_tier: dict[str, int] = field(default_factory=dict)
    ttft_s: float | None = None
    onload_s: float | None = None  # admission to its lower-tier hits placed on the device (None: no reads)
    itl_s: list[float] = field(default_factory=list)  # between consecutive tokens
    num_preemptions: int = 0
    error: str | None = None  # set instead of tokens for a request that cannot run
