"""LatencyStats reports the same nearest-rank percentiles as the storage bench (one function)."""
import pytest

from kvtier.transfer.latency import LatencyStats, percentile_ms


def test_latency_stats_percentiles_are_nearest_rank_of_the_kept_window() -> None:
    stats = LatencyStats(window=100)
    for i in range(1, 151):  # 1..150 ms; the window keeps 51..150
        stats.record(i / 1000)
    assert stats.count == 150
    assert stats.as_dict() == {"count": 150, "p50_ms": 100.0, "p99_ms": 149.0}
    assert stats.percentile_ms(99) == percentile_ms([i / 1000 for i in range(51, 151)], 99)
    assert LatencyStats().percentile_ms(50) is None


def test_percentile_is_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(values, 50) == pytest.approx(50.0)
    assert percentile_ms(values, 99) == pytest.approx(99.0)
    assert percentile_ms([], 50) is None
