"""PriorityExecutor: a thread pool whose queue runs reads (prefetch) ahead of writes (spill)."""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from kvtier.config import check_positive_int

T = TypeVar("T")

READ = 0  # NOTE: lower runs first: a prefetch a request waits on beats a spill nobody waits on
WRITE = 1

_Item = tuple[int, int, "Future[Any] | None", "Callable[[], Any] | None"]


class PriorityExecutor:
    """`num_workers` threads draining one priority queue; FIFO within a priority."""

    def __init__(self, num_workers: int, name: str = "kvtier-io") -> None:
        check_positive_int("PriorityExecutor", "num_workers", num_workers)
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(num_workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` on a worker; the future can be cancelled until a worker takes it."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after PriorityExecutor.shutdown()")
            self._queue.put((priority, next(self._order), future, lambda: fn(*args)))
        return future

    def _work(self) -> None:
        while True:
            _, _, future, call = self._queue.get()
            if future is None or call is None:  # shutdown marker
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put((WRITE + 1, next(self._order), None, None))  # after all real work
        if wait:
            for thread in self._threads:
                thread.join()
