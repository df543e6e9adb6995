"""The function queue's spare slots: what a speculative backup may take without delaying anyone."""

from __future__ import annotations

import threading
import time

from services.coordinator.capacity import FunctionQueue


def _asking(queue: FunctionQueue, job_id: str, count: int) -> threading.Thread:
    """A thread of ``job_id`` waiting in line for ``count`` slots (until it has them, leaves, or 5 s pass)."""
    queue.enter(job_id)
    thread = threading.Thread(target=queue.acquire, args=(job_id, count, threading.Event(), time.monotonic() + 5))
    thread.start()
    deadline = time.monotonic() + 5
    while queue.position(job_id) is None or not queue._asking.get(job_id):
        assert time.monotonic() < deadline, "the waiting thread never asked"
        time.sleep(0.01)
    return thread


def test_a_spare_slot_is_taken_only_when_free() -> None:
    queue = FunctionQueue(limit=2)
    assert queue.take_spare("job-a") and queue.take_spare("job-a")
    assert not queue.take_spare("job-a")  # full
    queue.release()
    assert queue.take_spare("job-a")


def test_a_spare_slot_is_never_taken_from_a_job_waiting_in_line() -> None:
    queue = FunctionQueue(limit=3)
    queue.enter("job-a")
    assert queue.acquire("job-a", 1, threading.Event(), time.monotonic() + 1)
    waiting = _asking(queue, "job-b", 3)  # a communicator job: all its slots at once
    assert not queue.take_spare("job-a")  # two are free, but job-b waits for them
    queue.leave("job-b")  # (cancelled)
    waiting.join(5)
    assert queue.take_spare("job-a")


def test_taking_a_spare_slot_leaves_the_line_as_it_was() -> None:
    queue = FunctionQueue(limit=4)
    queue.enter("job-a")
    queue.enter("job-b")
    assert queue.take_spare("job-b")
    assert queue.position("job-a") == 1 and queue.position("job-b") == 1  # nobody asking: each first
    assert queue.free_now("job-a") and queue.free_now("job-b")


def test_unknown_capacity_always_has_a_spare_slot() -> None:
    queue = FunctionQueue(limit=None)
    assert all(queue.take_spare("job-a") for _ in range(100))
