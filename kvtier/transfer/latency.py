"""Latency percentiles: the one nearest-rank `percentile_ms`, and LatencyStats, a tier's recent samples."""
from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable


def percentile_ms(values_s: Iterable[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0..100) of latencies in seconds, in milliseconds; None if empty."""
    ordered = sorted(values_s)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))  # q * n first: exact for whole q
    return ordered[rank - 1] * 1e3


class LatencyStats:
    """Keeps the last `window` samples (seconds); percentiles are computed on demand."""

    def __init__(self, window: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def record(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self.count += 1

    def record_many(self, seconds: float, count: int) -> None:
        """`count` samples of `seconds` each (a batch's time shared among its blocks)."""
        with self._lock:
            self._samples.extend(itertools.repeat(seconds, count))
            self.count += count

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0..100, nearest rank) of the kept samples, or None with no samples."""
        with self._lock:
            samples = list(self._samples)
        return percentile_ms(samples, q)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99)}
