"""The decode bench checks the engine's tokens against transformers' before timing (no timed assertion)."""
import pytest

from kvtier.bench.decode import decode_bench

pytest.importorskip("transformers")


def test_decode_bench_runs_both_sides_on_the_same_weights() -> None:
    row = decode_bench("tiny", batch=2, prompt_len=9, new_tokens=4, rounds=1)
    assert len(row["kvtier_tok_s"]) == len(row["transformers_tok_s"]) == 1 and row["ratio_median"] > 0
