"""Tensor and pipeline parallel runs on real torch.distributed processes (gloo): the same greedy tokens
as one process, with spills to disk, ranks that agree on what their tiers served, and a dead rank
that ends the run with its name."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kvtier.cache import TieredKVCache
from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request, RequestOutput
from kvtier.model.load import load_model
from kvtier.parallel.launch import RankFailedError, launch
from kvtier.parallel.serve import GenerateJob, ParallelRun, generate_parallel
from kvtier.parallel.shards import ParallelConfig
from kvtier.tiers.disk.shard_names import SHARDS_DIR
from tests.parallel import rank_faults

transformers = pytest.importorskip("transformers")

ENGINE = EngineConfig(max_num_seqs=4, max_num_batched_tokens=48, deterministic=True)  # NOTE: batches free of I/O timing


def checkpoint(path: Path, kind: str, vocab_size: int = 128) -> str:
    """A random HF checkpoint: a GQA Llama (4 query heads, 2 KV heads) or an MQA Qwen2 (1 KV head, biases),
    three layers so that two pipeline stages split them unevenly."""
    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                 pad_token_id=None)
    torch.manual_seed(0)
    if kind == "gqa":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **shape))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=1, **shape))
    model.save_pretrained(path)
    return str(path)


def requests() -> tuple[Request, ...]:
    """Six prompts of three to four blocks, then three that continue the first three: more blocks than the
    12-block pool and the 1-block host tier hold, so the first prompts spill to disk and come back from it
    (and one sequence is preempted on the way)."""
    rng = random.Random(0)
    prompts = [[rng.randrange(128) for _ in range(50 + 3 * i)] for i in range(6)]
    prompts += [prompts[i] + [rng.randrange(128) for _ in range(5)] for i in range(3)]
    return tuple(Request(request_id=f"r{i}", prompt_token_ids=tuple(p), max_tokens=12) for i, p in enumerate(prompts))


def cache_config(model: str, folder: Path) -> KVTierConfig:
    layout = load_model(model, dtype="float32").kv_layout(16)
    return KVTierConfig(layout=layout, device=DeviceTierConfig(num_blocks=12),
                        tiers=(HostTierConfig(num_blocks=1),
                               DiskTierConfig(path=str(folder), capacity_bytes=1 << 24, fsync=False)))


def one_process(model: str, folder: Path) -> list[RequestOutput]:
    cache = TieredKVCache.from_config(cache_config(model, folder))
    try:
        return LLMEngine(load_model(model, dtype="float32"), cache, ENGINE).generate(requests())
    finally:
        cache.close()


def parallel(model: str, folder: Path, tp: int, pp: int, persist: bool = False,
             vocab_parallel: bool = True) -> ParallelRun:
    job = GenerateJob(model=model, requests=requests(), cache=cache_config(model, folder), engine=ENGINE,
                      dtype="float32", persist=persist)
    return generate_parallel(job, ParallelConfig(tp_size=tp, pp_size=pp, vocab_parallel=vocab_parallel))


@pytest.fixture(scope="module", params=["gqa", "mqa"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_tensor_and_pipeline_parallel_runs_give_one_processs_tokens_while_spilling(
        model: str, tmp_path: Path, tp: int, pp: int) -> None:
    expected = one_process(model, tmp_path / "one")
    run = parallel(model, tmp_path / "ranks", tp, pp)
    assert [o.token_ids for o in run.outputs] == [o.token_ids for o in expected]
    assert [o.num_cached_tokens for o in run.outputs] == [o.num_cached_tokens for o in expected]
    assert sum(o.num_preemptions for o in run.outputs) > 0
    assert all(stats["disk"]["puts"] > 0 and stats["disk"]["hits"] > 0 for stats in run.tier_stats)
    shards = sorted(p.name for p in (tmp_path / "ranks" / SHARDS_DIR).iterdir())
    kv = "2" if "gqa" in model else "1"
    if pp == 2:  # each stage's objects in its own folder: three layers split 2 + 1
        assert shards == [f"layers-0-2.heads-0-{kv}", f"layers-2-3.heads-0-{kv}"]
    else:  # two KV heads split, one replicated
        assert shards == (["layers-0-3.heads-0-1", "layers-0-3.heads-1-2"] if kv == "2"
                          else ["layers-0-3.heads-0-1.replica-1"])  # the first copy of the whole KV is at the root


@pytest.mark.parametrize("vocab_parallel", [True, False])
def test_an_lm_head_vocab_parallel_or_replicated_gives_one_processs_tokens(tmp_path: Path,
                                                                            vocab_parallel: bool) -> None:
    """127 tokens over two tensor ranks of two stages: vocab-parallel slices of 64 rows (the second padded with
    a zero row, dropped after the gather, the logits then broadcast from the last stage), or every row on each."""
    model = checkpoint(tmp_path / "gqa", "gqa", vocab_size=127)
    expected = one_process(model, tmp_path / "one")
    run = parallel(model, tmp_path / "ranks", 2, 2, vocab_parallel=vocab_parallel)
    assert [o.token_ids for o in run.outputs] == [o.token_ids for o in expected]
    assert [o.num_cached_tokens for o in run.outputs] == [o.num_cached_tokens for o in expected]


def test_four_tensor_ranks_over_two_kv_heads_replicate_them(tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "gqa", "gqa")
    expected = one_process(model, tmp_path / "one")
    run = parallel(model, tmp_path / "ranks", 4, 1)
    assert [o.token_ids for o in run.outputs] == [o.token_ids for o in expected]


def test_a_rank_whose_tier_fails_makes_every_rank_recompute(tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "gqa", "gqa")
    folder = tmp_path / "cache"
    first = parallel(model, folder, 2, 1, persist=True)
    warm = parallel(model, folder, 2, 1)  # a new run on the same folders: each rank's shard is found
    assert [o.token_ids for o in warm.outputs] == [o.token_ids for o in first.outputs]
    assert all(o.num_cached_tokens >= 32 for o in warm.outputs)
    for path in (folder / SHARDS_DIR / "layers-0-3.heads-1-2").glob("*/*.kvb"):  # rank 1's objects only
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    damaged = parallel(model, folder, 2, 1)
    assert [o.token_ids for o in damaged.outputs] == [o.token_ids for o in first.outputs]
    assert damaged.outputs[0].num_cached_tokens == 0  # rank 0's intact copy is not served alone
    assert damaged.tier_stats[1]["disk"]["corrupt"] > 0 and damaged.tier_stats[0]["disk"]["corrupt"] == 0


def test_a_killed_rank_ends_the_run_naming_it() -> None:
    with pytest.raises(RankFailedError, match="rank 1 of 2 .* was killed by SIGKILL") as info:
        launch(rank_faults.killed_on_rank_one, ParallelConfig(tp_size=2))
    assert info.value.rank == 1


def test_a_rank_that_raises_ends_the_run_with_its_error() -> None:
    with pytest.raises(RankFailedError, match="rank 2 of 3 .*ValueError: rank 2 could not open its tier"):
        launch(rank_faults.raises_on_last_rank, ParallelConfig(pp_size=3))


def test_a_folder_written_at_tp2_serves_tp1_and_pp2(tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "gqa", "gqa")
    folder = tmp_path / "cache"
    written = parallel(model, folder, 2, 1, persist=True)
    for tp, pp in [(1, 1), (1, 2)]:
        run = parallel(model, folder, tp, pp)
        assert [o.token_ids for o in run.outputs] == [o.token_ids for o in written.outputs]
        assert all(o.num_cached_tokens >= 32 for o in run.outputs)  # every prompt's prefix, from TP=2's objects
        assert all(stats["other_layouts_disk"]["hits"] > 0 for stats in run.tier_stats)


@pytest.mark.parametrize("writer, reader", [((1, 1), (2, 1)), ((1, 1), (4, 1)), ((1, 2), (2, 1))])
def test_a_folder_written_at_tp1_or_pp2_serves_tp2_and_tp4_reading_only_their_heads(
        tmp_path: Path, writer: tuple[int, int], reader: tuple[int, int]) -> None:
    from kvtier.tiers.format import header_bytes_for, num_segments

    model = checkpoint(tmp_path / "gqa", "gqa")
    folder = tmp_path / "cache"
    written = parallel(model, folder, *writer, persist=True)
    run = parallel(model, folder, *reader)  # TP=4 over two KV heads: each rank reads the one it replicates
    assert [o.token_ids for o in run.outputs] == [o.token_ids for o in written.outputs]
    assert all(o.num_cached_tokens >= 32 for o in run.outputs)
    whole = cache_config(model, folder).layout
    object_bytes = header_bytes_for(whole.block_size, num_segments(whole)) + whole.page_size_bytes
    for stats in run.tier_stats:
        read = stats["other_layouts_disk"]
        assert read["hits"] > 0
        if writer == (1, 1):  # a whole object read at TP=2 or TP=4: half of it or less per rank
            assert read["bytes_read"] / read["hits"] <= 0.55 * object_bytes
