"""LatencyStats: recent operation latencies per tier, reported as p50/p99 in milliseconds."""
from __future__ import annotations

import threading
from collections import deque


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

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0..100, nearest rank) of the kept samples, or None with no samples."""
        with self._lock:
            ordered = sorted(self._samples)
        if not ordered:
            return None
        rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank] * 1000.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99)}
