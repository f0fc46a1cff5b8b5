"""The TieredCache benchmark runs end to end on the tiny preset (tokens checked equal before timing)."""
import pytest

pytest.importorskip("transformers", minversion="5.0")


def test_hf_cache_bench_reports_each_cache_against_dynamic():
    from kvtier.bench.hf_cache import hf_cache_bench

    row = hf_cache_bench("tiny", prompt_len=40, new_tokens=6, rounds=1)
    assert set(row["ratio_to_dynamic_median"]) == {"tiered_resident", "tiered_disk_quarter",
                                                   "tiered_disk_quarter_prefetch"}
    assert all(len(s) == 1 and s[0] > 0 for s in row["seconds"].values())
    assert row["context_blocks"] // 4 <= row["device_budget_blocks"] < row["context_blocks"]
