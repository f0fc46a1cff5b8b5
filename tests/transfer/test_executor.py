import threading

import pytest

from kvtier.transfer.executor import READ, WRITE, PriorityExecutor


def test_reads_queued_after_writes_still_run_first():
    executor = PriorityExecutor(1)
    gate, order = threading.Event(), []
    blocker = executor.submit(READ, gate.wait)  # occupies the only worker
    futures = [executor.submit(WRITE, order.append, "w1"), executor.submit(WRITE, order.append, "w2"),
               executor.submit(READ, order.append, "r1"), executor.submit(READ, order.append, "r2")]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert order == ["r1", "r2", "w1", "w2"]
    executor.shutdown()


def test_cancelled_before_start_never_runs_and_errors_reach_the_future():
    executor = PriorityExecutor(1)
    gate, ran = threading.Event(), []
    executor.submit(READ, gate.wait)
    doomed = executor.submit(WRITE, ran.append, "x")
    assert doomed.cancel()
    failing = executor.submit(READ, lambda: 1 / 0)
    gate.set()
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    executor.shutdown()
    assert ran == [] and doomed.cancelled()


def test_shutdown_drains_queue_and_refuses_new_work():
    executor = PriorityExecutor(2)
    done = [executor.submit(WRITE, lambda i=i: i) for i in range(20)]
    executor.shutdown(wait=True)
    assert [f.result() for f in done] == list(range(20))
    with pytest.raises(RuntimeError, match="submit after PriorityExecutor.shutdown"):
        executor.submit(READ, print)
