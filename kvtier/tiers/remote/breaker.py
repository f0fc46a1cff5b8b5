"""A circuit breaker: after N failed calls in a row, stop calling for a while, then let one through.

While open, every call of the remote tier is a miss at once, so a server that is down costs the
forward pass nothing but the first failures' timeouts; the first call after the pause probes it,
and one success closes the breaker again (hits resume).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Counts consecutive failures; `allow()` says whether to try the server now. Thread-safe."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.reset_s, self._clock = failures, reset_s, clock
        self._lock = threading.Lock()
        self._failed = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0  # times it opened (a counter for stats)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def allow(self) -> bool:
        """True to make the call; False while open (one caller at a time gets True after reset_s: the probe)."""
        if self._opened_at is None:
            return True  # NOTE: closed (every call of a healthy server): one attribute read, no lock
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_s:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        if not (self._failed or self._probing or self._opened_at is not None):
            return  # NOTE: closed with no failures (every call of a healthy server): nothing to reset, no lock
        with self._lock:
            self._failed, self._opened_at, self._probing = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failed += 1
            if self._probing or (self._opened_at is None and self._failed >= self.failures):
                if self._opened_at is None:
                    self.opened += 1
                self._opened_at, self._probing = self._clock(), False
