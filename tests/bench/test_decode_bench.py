"""The decode bench checks the engine's tokens against transformers' before timing (no timed assertion)."""
import pytest

from kvtier.bench.decode import decode_bench

pytest.importorskip("transformers")


def test_decode_bench_runs_both_sides_on_the_same_weights() -> None:
    # NOTE: 16 new tokens, so decode time (a full run less a one-token run) stands clear of the noise;
    # at 4 a slow one-token run on a busy CI machine made it negative
    row = decode_bench("tiny", batch=2, prompt_len=9, new_tokens=16, rounds=1)
    assert len(row["kvtier_tok_s"]) == len(row["transformers_tok_s"]) == 1 and row["ratio_median"] > 0


def test_varied_scenario_checks_tokens_of_padded_static_batches_against_the_engine() -> None:
    row = decode_bench("tiny", batch=3, prompt_len=12, new_tokens=4, rounds=1, scenario="varied")
    assert row["num_requests"] == 6 and len(set(row["prompt_lens"])) > 1 and len(set(row["max_tokens"])) > 1
    assert row["kvtier_tok_s"][0] > 0 and row["transformers_tok_s"][0] > 0
