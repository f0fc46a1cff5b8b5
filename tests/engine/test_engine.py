"""The engine on a seeded tiny model: continuous batching, chunked prefill and preemption by offload
give the tokens of the plain greedy loop; every finish reason; bad requests fail alone; sampling
follows its seed; a request's onload overlaps the others' compute."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import DiskTierConfig, HostTierConfig, ModelConfig
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request, SamplingParams
from kvtier.engine.sequence import SeqStatus
from kvtier.model.generate import generate_greedy
from kvtier.model.weights import fingerprint, random_model
from kvtier.tiers.build import open_tier
from tests.transfer.fake_tier import FakeTier

CONFIG = dataclasses.replace(ModelConfig.preset("tiny"), eos_token_ids=())
MODEL = random_model(CONFIG, seed=0)
LAYOUT = CONFIG.kv_layout(block_size=4)
PROMPTS = [[(7 * i + p) % 250 for i in range(9 + 5 * p)] for p in range(6)]


def reference(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    cache = TieredKVCache(LAYOUT, 512)
    namespace = namespace_digest(fingerprint(MODEL), None)
    return [g.token_ids for g in generate_greedy(MODEL, cache, prompts, namespace, max_new_tokens=max_new_tokens)]


def requests(prompts: list[list[int]], max_tokens: int = 20, **options: object) -> list[Request]:
    return [Request(request_id=f"r{i}", prompt_token_ids=tuple(p), max_tokens=max_tokens, **options)  # type: ignore[arg-type]
            for i, p in enumerate(prompts)]


@pytest.mark.parametrize("budget", [512, 7])  # one step per prefill, or chunks of at most 7 tokens
def test_batched_and_chunked_decoding_gives_the_plain_loops_tokens(budget: int) -> None:
    engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 256), EngineConfig(max_num_batched_tokens=budget))
    outputs = engine.generate(requests(PROMPTS))
    assert [o.token_ids for o in outputs] == reference(PROMPTS, 20)
    assert all(o.finish_reason == "length" and o.ttft_s is not None and len(o.itl_s) == 19 for o in outputs)


def test_preempted_sequences_resume_from_the_tiers_without_recompute(tmp_path: Path) -> None:
    tiers = [open_tier(LAYOUT, HostTierConfig(num_blocks=8)),
             open_tier(LAYOUT, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 22, fsync=False))]
    engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 24, tiers), EngineConfig(max_num_batched_tokens=16))
    outputs = engine.generate(requests(PROMPTS))
    assert [o.token_ids for o in outputs] == reference(PROMPTS, 20)
    assert sum(o.num_preemptions for o in outputs) > 0 and engine.num_recomputed_tokens == 0


def test_without_a_lower_tier_a_preempted_prefix_is_recomputed_and_counted() -> None:
    engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 24), EngineConfig(max_num_batched_tokens=16))
    outputs = engine.generate(requests(PROMPTS))
    assert [o.token_ids for o in outputs] == reference(PROMPTS, 20)
    assert sum(o.num_preemptions for o in outputs) > 0 and engine.num_recomputed_tokens > 0


def test_every_finish_reason_and_the_prefix_served_from_the_cache() -> None:
    config = dataclasses.replace(CONFIG, max_position_embeddings=24)
    model = random_model(config, seed=0)
    engine = LLMEngine(model, TieredKVCache(LAYOUT, 64))
    first = reference([PROMPTS[1]], 1)[0][0]
    stop, length, context = engine.generate([
        Request(request_id="stop", prompt_token_ids=tuple(PROMPTS[1]), max_tokens=5, stop_token_ids=(first,)),
        Request(request_id="length", prompt_token_ids=tuple(PROMPTS[1]), max_tokens=3),
        Request(request_id="context", prompt_token_ids=tuple(range(20)), max_tokens=100)])
    assert (stop.finish_reason, stop.token_ids) == ("stop", [first])
    assert length.finish_reason == "length" and len(length.token_ids) == 3
    assert context.finish_reason == "context" and len(context.token_ids) == 4  # 20 + 4 = the window of 24
    again = engine.generate([Request(request_id="again", prompt_token_ids=tuple(PROMPTS[1]), max_tokens=1)])[0]
    assert again.num_cached_tokens == 12 and again.cached_blocks_by_tier == {"device": 3}


def test_a_request_that_cannot_run_gets_an_error_and_the_others_run() -> None:
    engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 32))
    too_long = tuple(range(CONFIG.max_position_embeddings))
    outputs = engine.generate([
        Request(request_id="vocab", prompt_token_ids=(1, CONFIG.vocab_size), max_tokens=2),
        Request(request_id="ok", prompt_token_ids=tuple(PROMPTS[0]), max_tokens=2),
        Request(request_id="window", prompt_token_ids=tuple(t % 250 for t in too_long), max_tokens=2),
        Request(request_id="pool", prompt_token_ids=tuple(t % 250 for t in range(200)), max_tokens=2)])
    assert "outside the vocabulary of 256" in (outputs[0].error or "")
    assert outputs[1].error is None and outputs[1].token_ids == reference([PROMPTS[0]], 2)[0]
    assert "context window of 1024" in (outputs[2].error or "")
    assert "the pool has 32" in (outputs[3].error or "")
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1"):
        Request(request_id="x", prompt_token_ids=(1,), max_tokens=0)


def test_sampling_follows_its_seed() -> None:
    def run(seed: int | None, **params: object) -> list[list[int]]:
        engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 128))
        sampling = SamplingParams(temperature=1.5, seed=seed, **params)  # type: ignore[arg-type]
        return [o.token_ids for o in engine.generate(requests(PROMPTS[:3], 12, sampling=sampling))]

    assert run(7) == run(7) != run(8)
    assert run(7, top_k=1) == reference(PROMPTS[:3], 12) == run(3, top_p=1e-6)


def spilled_to_a_slow_tier(config: EngineConfig | None = None) -> tuple[FakeTier, LLMEngine, list[int]]:
    """An engine over 12 device blocks and a gated tier that now holds a 33-token prompt's blocks."""
    slow = FakeTier(LAYOUT)
    cache = TieredKVCache(LAYOUT, 12, [slow])
    engine = LLMEngine(MODEL, cache, config)
    long_prompt = [(5 * i) % 250 for i in range(33)]
    engine.generate(requests([long_prompt], 1))
    engine.generate(requests([[(3 * i + 1) % 250 for i in range(44)]], 1))  # pushes its blocks out to the slow tier
    cache.flush()
    return slow, engine, long_prompt


def test_a_requests_onload_overlaps_the_others_compute() -> None:
    slow, engine, long_prompt = spilled_to_a_slow_tier()
    slow.gate.clear()  # from now on the slow tier's reads wait
    engine.add_request(Request(request_id="onload", prompt_token_ids=tuple(long_prompt), max_tokens=3))
    engine.add_request(Request(request_id="other", prompt_token_ids=tuple(PROMPTS[0]), max_tokens=3))
    onload, other = engine.waiting[0], engine.waiting[1]

    def until_other_finishes() -> None:
        while other.status is not SeqStatus.FINISHED:
            engine.step()

    stepping = threading.Thread(target=until_other_finishes, daemon=True)
    stepping.start()
    stepping.join(timeout=60)
    blocked = stepping.is_alive()
    slow.gate.set()  # let a blocked step end before failing
    stepping.join()
    assert not blocked, "a step waited for another request's onload"
    assert onload.status is SeqStatus.ONLOADING and onload.output.token_ids == []
    while engine.has_unfinished():
        engine.step()
    assert onload.output.token_ids == reference([long_prompt], 3)[0]
    assert onload.output.cached_blocks_by_tier.get("host", 0) > 0
    assert onload.output.onload_s is not None and onload.output.onload_s > 0  # admission to blocks in place
    assert other.output.onload_s is None  # nothing of its prompt was below the device


def test_a_lone_onloading_request_is_waited_for_not_polled() -> None:
    _, engine, long_prompt = spilled_to_a_slow_tier()
    output = engine.add_request(Request(request_id="onload", prompt_token_ids=tuple(long_prompt), max_tokens=3))
    engine.step()  # nothing else to run: the step waits for the reads, then computes the rest of the prompt
    assert engine.running[0].status is SeqStatus.RUNNING and len(output.token_ids) == 1
    assert output.onload_s is not None and output.cached_blocks_by_tier.get("host", 0) > 0


def test_a_deterministic_engine_places_an_onload_in_the_step_after_admission() -> None:
    slow, engine, long_prompt = spilled_to_a_slow_tier(EngineConfig(deterministic=True))
    slow.gate.clear()  # the reads submitted at admission wait
    engine.add_request(Request(request_id="onload", prompt_token_ids=tuple(long_prompt), max_tokens=3))
    engine.add_request(Request(request_id="other", prompt_token_ids=tuple(PROMPTS[0]), max_tokens=3))
    onload = engine.waiting[0]
    engine.step()  # admits both; the other request computes while the reads wait
    assert onload.status is SeqStatus.ONLOADING
    slow.gate.set()
    engine.step()  # whether or not the reads are done yet, this step waits for them and places them
    assert onload.status is SeqStatus.RUNNING and len(onload.output.token_ids) == 1
    while engine.has_unfinished():
        engine.step()
    assert onload.output.token_ids == reference([long_prompt], 3)[0]
    with pytest.raises(ValueError, match="deterministic must be a bool"):
        EngineConfig(deterministic=1)  # type: ignore[arg-type]


def test_a_sequence_that_outgrows_the_whole_pool_ends_with_an_error_not_a_loop() -> None:
    engine = LLMEngine(MODEL, TieredKVCache(LAYOUT, 3))  # 3 blocks of LAYOUT.block_size tokens
    prompt = list(range(1, 3 * LAYOUT.block_size - 1))  # fits, with room for one generated token
    (output,) = engine.generate([Request(request_id="big", prompt_token_ids=tuple(prompt), max_tokens=8)])
    assert output.error is not None and "outgrew the device pool" in output.error and output.finish_reason is None
    assert 1 <= len(output.token_ids) < 8 and not engine.has_unfinished()
    assert engine.cache.manager.num_free_blocks == 3
