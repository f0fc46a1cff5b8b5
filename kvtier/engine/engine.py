"""LLMEngine: continuous batching over the reference decoder and a TieredKVCache.

Each step admits waiting requests while the pool has room (their cached prefix is read up from
lower tiers in the background: a request joins a step only once its reads are done, so one
request's onload overlaps the others' compute), then runs one forward pass over a decode token for
every decoding sequence and prefill chunks for the rest, under a token budget. When a decoding
sequence needs a block and none is free, the newest running sequence is preempted by offload: its
full blocks are left to the cache's eviction path (they spill to the lower tiers as their device
blocks are reused), its partial last block is kept in host memory, and on resume the prefix is
onloaded back and the tail restored, not recomputed.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.engine.request import Request, RequestOutput
from kvtier.engine.sampling import sample
from kvtier.engine.sequence import EngineSequence, SeqStatus
from kvtier.errors import OutOfBlocksError
from kvtier.model.batch import Chunk, ForwardBatch
from kvtier.model.decoder import Transformer
from kvtier.model.weights import fingerprint
from kvtier.types import SeqId


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """`max_num_batched_tokens` is the token budget of one step (decode tokens plus prefill chunks).

    `deterministic`: a sequence's lower-tier reads are waited for in the step after it is
    admitted, instead of placed whenever they are done (its first step still overlaps the others'
    compute), so which sequences share a step (and with it every chunk boundary and the float
    rounding of the sums) does not depend on I/O timing. Without it a run's greedy tokens can
    differ from another run's where two logits nearly tie: seen once in a TP=2 parity test while
    both cores ran other work.
    """

    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"EngineConfig.deterministic must be a bool, got {self.deterministic!r}")


class LLMEngine:
    """Runs Requests to completion on `model`, keeping their KV in `cache`."""

    def __init__(self, model: Transformer, cache: TieredKVCache, config: EngineConfig | None = None) -> None:
        if cache.layout != model.kv_layout(cache.layout.block_size, cache.layout.dtype) \
                or cache.layout.dtype != model.config.dtype:
            raise ValueError(f"the cache's layout {cache.layout} does not hold K/V of {model.config.name} "
                             f"({model.kv_layout(cache.layout.block_size)})")
        self.model, self.cache, self.config = model, cache, config or EngineConfig()
        self._fingerprint = fingerprint(model)
        self.waiting: deque[EngineSequence] = deque()
        self.running: list[EngineSequence] = []
        self._failed: list[RequestOutput] = []  # ended by _fail during a step, reported by it
        self.num_recomputed_tokens = 0  # a preempted prefix that no tier kept (should stay 0 with lower tiers)

    def add_request(self, request: Request) -> RequestOutput:
        """Queue a request; its output fills in as it runs. One that can never run finishes at
        once with `error` set."""
        seq = EngineSequence.start(request, namespace_digest(self._fingerprint, request.cache_salt))
        error = self._refusal(request)
        if error is not None:
            seq.output.error, seq.status = error, SeqStatus.FINISHED
        self.waiting.append(seq)
        return seq.output

    def has_unfinished(self) -> bool:
        return any(s.status is not SeqStatus.FINISHED for s in self.waiting) or bool(self.running)

    def generate(self, requests: Iterable[Request]) -> list[RequestOutput]:
        """Every request's output, in the order given."""
        outputs = [self.add_request(request) for request in requests]
        while self.has_unfinished():
            self.step()
        return outputs

    def step(self) -> list[RequestOutput]:
        """Admit, compute one step, sample; the outputs of the requests that finished in it."""
        finished = self._drop_refused()
        admitted = self._admit()
        self._finish_onloads(admitted)
        plan = self._plan()
        finished += self._failed
        self._failed = []
        if not plan:
            return finished
        batch = ForwardBatch.build([chunk for _, chunk in plan], self.cache.layout.block_size, self.cache.pool.device)
        logits = self.model(batch, self.cache.pool)  # [len(plan), vocab]
        for seq, chunk in plan:
            seq.num_computed = chunk.start + len(chunk.token_ids)
            self.cache.mark_computed(seq.seq_id, seq.num_computed)
        for row, (seq, _) in enumerate(plan):
            if seq.num_uncomputed == 0:  # its prompt is done, or its last token: the next one is due
                finished += self._advance(seq, sample(logits[row], seq.request.sampling, seq.generator))
        return finished

    def _refusal(self, request: Request) -> str | None:
        vocab, context = self.model.config.vocab_size, self.model.config.max_position_embeddings
        if max(request.prompt_token_ids) >= vocab:
            return f"token id {max(request.prompt_token_ids)} is outside the vocabulary of {vocab} tokens"
        if len(request.prompt_token_ids) >= context:
            return (f"prompt of {len(request.prompt_token_ids)} tokens does not fit the model's context window "
                    f"of {context} (one position must be left to generate)")
        needed = -(-(len(request.prompt_token_ids) + 1) // self.cache.layout.block_size)
        if needed > self.cache.pool.num_blocks:
            return (f"prompt needs {needed} device blocks, the pool has {self.cache.pool.num_blocks}; "
                    "raise the device blocks")
        return None

    def _drop_refused(self) -> list[RequestOutput]:
        refused = [s for s in self.waiting if s.status is SeqStatus.FINISHED]
        self.waiting = deque(s for s in self.waiting if s.status is not SeqStatus.FINISHED)
        return [s.output for s in refused]

    def _admit(self) -> set[SeqId]:
        """Allocate waiting sequences in order while blocks and seats allow (preempted ones first);
        the seq ids admitted."""
        admitted_ids: set[SeqId] = set()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            admitted = time.perf_counter()  # NOTE: before allocate, whose hashing and lookups a restore includes
            try:
                state = self.cache.allocate(seq.seq_id, seq.tokens, seq.namespace, wait=False)
            except OutOfBlocksError:
                return admitted_ids  # NOTE: it waits for running sequences to finish; _refusal caught the impossible
            self.waiting.popleft()
            seq.status, seq.num_computed = SeqStatus.ONLOADING, state.num_cached_tokens
            seq.admitted_s = admitted
            self.running.append(seq)
            admitted_ids.add(seq.seq_id)
        return admitted_ids

    def _finish_onloads(self, just_admitted: set[SeqId]) -> None:
        """Place the reads that are done; when nothing else could run this step, wait for the oldest
        (blocking, so the readers get the CPU instead of a polling loop)."""
        onloading = [s for s in self.running if s.status is SeqStatus.ONLOADING]
        if self.config.deterministic:  # NOTE: no reads, or reads of a step before (done or not): no timing in it
            ready = [s for s in onloading if s.seq_id not in just_admitted or not self.cache.is_onloading(s.seq_id)]
        else:
            ready = [s for s, done in zip(onloading, self.cache.onloads_ready([s.seq_id for s in onloading])) if done]
        if onloading and not ready and len(onloading) == len(self.running):
            ready = onloading[:1]  # NOTE: nothing else can run this step: wait for the oldest read
        for seq in ready:
            reads = self.cache.is_onloading(seq.seq_id)
            self.cache.finish_onload(seq.seq_id)
            seq.num_computed = self.cache.manager.seq(seq.seq_id).num_cached_tokens
            if not seq.output.num_preemptions:  # NOTE: a resume's hits are its own blocks coming back
                if reads and seq.admitted_s is not None:
                    seq.output.onload_s = time.perf_counter() - seq.admitted_s
                seq.output.num_cached_tokens = seq.num_computed
                seq.output.cached_blocks_by_tier = {k.value: n for k, n in
                                                     self.cache.cached_blocks_by_tier(seq.seq_id).items()}
            _restore_tail(self.cache, seq, self)
            seq.status = SeqStatus.RUNNING

    def _plan(self) -> list[tuple[EngineSequence, Chunk]]:
        """Decode tokens first (one per decoding sequence), then prefill chunks, under the token budget.

        A decoding sequence's new token gets its slot here, before the step; when no block is
        free, the newest running sequence is preempted (possibly this one).
        """
        budget = self.config.max_num_batched_tokens
        plan: list[tuple[EngineSequence, Chunk]] = []
        for seq in sorted(self._ready(), key=lambda s: s.num_uncomputed != 1):
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING or not self._make_room(seq):
                continue
            size = min(seq.num_uncomputed, budget)
            block_ids = self.cache.manager.seq(seq.seq_id).block_ids
            plan.append((seq, Chunk(block_ids, seq.num_computed, seq.tokens[seq.num_computed:seq.num_computed + size])))
            budget -= size
        return [(seq, chunk) for seq, chunk in plan if seq.status is SeqStatus.RUNNING]

    def _ready(self) -> list[EngineSequence]:
        return [s for s in self.running if s.status is SeqStatus.RUNNING]

    def _make_room(self, seq: EngineSequence) -> bool:
        """Give the cache the tokens it lacks (a sampled token); False if `seq` itself was preempted."""
        missing = seq.tokens[len(self.cache.manager.seq(seq.seq_id).token_ids):]
        while missing:
            try:
                self.cache.append(seq.seq_id, missing)
                return True
            except OutOfBlocksError:
                victim = next((s for s in reversed(self.running) if s is not seq), seq)
                if victim is seq and len(self.running) == 1:  # alone and still too big: it can never fit
                    self._fail(seq, f"the sequence outgrew the device pool: {len(seq.tokens)} tokens need "
                                    f"{-(-len(seq.tokens) // self.cache.layout.block_size)} blocks, the pool has "
                                    f"{self.cache.pool.num_blocks}; raise the device blocks or lower max_tokens")
                    return False
                self._preempt(victim)
                if victim is seq:
                    return False
        return True

    def _advance(self, seq: EngineSequence, token: int) -> list[RequestOutput]:
        """Record a sampled token; the output, if that finished the sequence."""
        reason = seq.record_token(token, self.model.config.eos_token_ids, self.model.config.max_position_embeddings)
        if reason is None:
            return []
        seq.output.finish_reason, seq.status = reason, SeqStatus.FINISHED
        self.running.remove(seq)
        self.cache.free(seq.seq_id)
        return [seq.output]

    def _fail(self, seq: EngineSequence, error: str) -> None:
        """End a running sequence that cannot go on; its tokens so far stay in the output."""
        seq.output.error, seq.status = error, SeqStatus.FINISHED
        self.running.remove(seq)
        self.cache.free(seq.seq_id)
        self._failed.append(seq.output)

    def _preempt(self, seq: EngineSequence) -> None:
        """Offload a running sequence: full blocks to the eviction path, the partial tail to host memory.

        NOTE: every running sequence has at least one uncomputed token here (a sampled one, or the
        rest of its prompt), so on resume the cache can serve every full block it computed.
        """
        bs = self.cache.layout.block_size
        if seq.status is SeqStatus.RUNNING and seq.num_computed % bs:
            block_id = self.cache.manager.seq(seq.seq_id).block_ids[seq.num_computed // bs]
            seq.saved_tail = self.cache.pool.read_blocks([block_id]).cpu()
        seq.saved_computed = seq.num_computed if seq.status is SeqStatus.RUNNING else 0
        self.running.remove(seq)
        self.cache.free(seq.seq_id)
        seq.status = SeqStatus.WAITING
        seq.output.num_preemptions += 1
        self.waiting.appendleft(seq)


def _restore_tail(cache: TieredKVCache, seq: EngineSequence, engine: LLMEngine) -> None:
    """After resuming a preempted sequence: put its saved partial block back if its prefix came back
    whole; else it recomputes from where the cache stopped (correct, slower, and counted)."""
    saved, bs = seq.saved_computed, cache.layout.block_size
    if saved == 0:
        return
    if seq.num_computed == saved // bs * bs:
        if seq.saved_tail is not None:
            cache.pool.write_blocks([cache.manager.seq(seq.seq_id).block_ids[saved // bs]], seq.saved_tail)
        seq.num_computed = saved
    else:
        engine.num_recomputed_tokens += saved - seq.num_computed
    seq.saved_tail, seq.saved_computed = None, 0
