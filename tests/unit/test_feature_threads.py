"""The feature pass's threads: the batch producer and the engine runs (order, limits, errors)."""

from __future__ import annotations

import threading
import time

import pytest

from visionops.train.features import prefetch, run_in_order

pytestmark = pytest.mark.unit


def test_items_arrive_in_order_and_all_of_them() -> None:
    assert list(prefetch(iter(range(100)), depth=2)) == list(range(100))


def test_producer_runs_ahead_by_at_most_depth() -> None:
    made: list[int] = []

    def produce():
        for i in range(50):
            made.append(i)
            yield i

    items = prefetch(produce(), depth=2)
    assert next(items) == 0
    time.sleep(0.3)  # let the producer fill the queue
    # one handed out, two queued, one in the producer's hand waiting for room
    assert len(made) <= 4
    items.close()


def test_an_error_in_the_producer_is_raised_in_the_consumer() -> None:
    def produce():
        yield 1
        raise ValueError("broken image 7")

    items = prefetch(produce(), depth=2)
    assert next(items) == 1
    with pytest.raises(ValueError, match="broken image 7"):
        next(items)


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    started = threading.active_count()

    def produce():
        i = 0
        while True:  # endless: only the stop signal ends it
            yield i
            i += 1

    items = prefetch(produce(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == started


def test_run_in_order_keeps_the_order_when_later_batches_finish_first() -> None:
    def slow_for_even(x: int) -> int:
        time.sleep(0.05 if x % 2 == 0 else 0.0)
        return x * 10

    assert list(run_in_order(slow_for_even, range(8), parallel=2)) == [x * 10 for x in range(8)]


def test_run_in_order_runs_at_most_parallel_at_once_and_really_in_parallel() -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return x

    assert list(run_in_order(work, range(10), parallel=2)) == list(range(10))
    assert peak == 2
    peak = 0
    assert list(run_in_order(work, range(4), parallel=1)) == list(range(4))
    assert peak == 1


def test_run_in_order_raises_the_first_error_in_order() -> None:
    def work(x: int) -> int:
        if x == 3:
            raise RuntimeError("engine failed on batch 3")
        return x

    results = run_in_order(work, range(6), parallel=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="batch 3"):
        next(results)
