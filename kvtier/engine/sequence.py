"""One request's life in the engine: its tokens, how many have K/V in the pool, and its timings."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from kvtier.engine.request import FinishReason, Request, RequestOutput
from kvtier.engine.sampling import generator_for
from kvtier.types import Namespace, SeqId


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not allocated yet, or preempted (its blocks offloaded)
    ONLOADING = "onloading"  # allocated; its cached prefix is being read up from lower tiers
    RUNNING = "running"  # in the pool: prefilling in chunks, then decoding
    FINISHED = "finished"


@dataclass(slots=True)
class EngineSequence:
    request: Request
    seq_id: SeqId
    namespace: Namespace
    tokens: list[int]  # prompt and every token generated so far
    output: RequestOutput
    arrival_s: float = field(default_factory=time.perf_counter)
    admitted_s: float | None = None  # when the cache allocated it (its onload starts then)
    status: SeqStatus = SeqStatus.WAITING
    num_computed: int = 0  # leading tokens whose K/V are in the pool
    saved_tail: torch.Tensor | None = None  # a preempted sequence's partial last block, kept in host memory
    saved_computed: int = 0  # a preempted sequence's num_computed, to resume at
    generator: torch.Generator | None = None
    last_token_s: float | None = None

    @classmethod
    def start(cls, request: Request, namespace: Namespace) -> EngineSequence:
        seq = cls(request, SeqId(request.request_id), namespace, list(request.prompt_token_ids),
                  RequestOutput(request.request_id))
        seq.generator = generator_for(request.sampling)
        return seq

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    def record_token(self, token: int, eos_ids: tuple[int, ...], context_len: int) -> FinishReason | None:
        """Add a sampled token; why the sequence ends now, if it does."""
        now = time.perf_counter()
        if self.last_token_s is None:
            self.output.ttft_s = now - self.arrival_s
        else:
            self.output.itl_s.append(now - self.last_token_s)
        self.last_token_s = now
        self.tokens.append(token)
        self.output.token_ids.append(token)
        if token in eos_ids or token in self.request.stop_token_ids:
            return "stop"
        if len(self.output.token_ids) >= self.request.max_tokens:
            return "length"
        if len(self.tokens) >= context_len:
            return "context"
        return None
