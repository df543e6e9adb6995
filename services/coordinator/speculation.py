"""Which ranks deserve a speculative backup (the payload's ``speculate``, off by default).

A straggler (a slow sandbox, a noisy neighbour, a partition read slowly) holds a whole job; as in
MapReduce and Cubed, a rank running for longer than ``multiple`` x the median duration of the
ranks already finished gets one backup attempt, started beside it. The first of the two to
finish takes the rank's commit claim and writes its results; the other stops as ``superseded``
(it looks at the claim between batches) and writes nothing. Both are billed, and the report
says so. The median needs a few finished ranks to mean anything: at least ``MIN_FINISHED``, or
half the job when it is smaller. A rank gets one backup at most, and none while it waits out
throttling (it is not slow, it has not started).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable

from services.contracts import AttemptState, RankState
from services.coordinator.capacity import FunctionQueue
from services.coordinator.state import RankRecord
from services.coordinator.waves import Waves

#: Finished ranks needed before the median is trusted (or half the job, when smaller).
MIN_FINISHED = 3
#: Seconds between two looks for stragglers.
CHECK_S = 0.5


def finished_durations(records: Iterable[RankRecord]) -> list[float]:
    """Wall seconds of each succeeded rank's winning attempt."""
    durations = []
    for record in records:
        if record.state != RankState.SUCCEEDED:
            continue
        won = [a for a in record.attempts if a.state == AttemptState.SUCCEEDED and a.ended_at is not None]
        if won:
            durations.append(won[-1].ended_at - won[-1].started_at)  # type: ignore[operator]
    return durations


def stragglers(records: list[RankRecord], multiple: float, now: float) -> list[int]:
    """Ranks whose running attempt has taken longer than ``multiple`` x the finished ranks' median
    and that have no backup yet, slowest first."""
    durations = finished_durations(records)
    if not durations or len(durations) < max(1, min(MIN_FINISHED, len(records) // 2)):
        return []
    threshold = multiple * statistics.median(durations)
    late = []
    for record in records:
        if record.state != RankState.RUNNING or not record.attempts or any(a.speculative for a in record.attempts):
            continue
        current = record.attempts[-1]
        if current.state == AttemptState.RUNNING and now - current.started_at > threshold:
            late.append((now - current.started_at, record.rank))
    return [rank for _, rank in sorted(late, reverse=True)]


class Speculator:
    """Watches one job's ranks and calls ``start_backup(rank)`` for each straggler, once capacity is
    free: a backup is optional, so it takes a place behind every job already waiting, and none is
    started while ranks not started yet remain."""

    def __init__(self, queue: FunctionQueue, job_id: str, ranks: dict[int, RankRecord], multiple: float,
                 start_backup: Callable[[int], None]) -> None:
        self.queue, self.job_id, self.ranks, self.multiple = queue, job_id, ranks, multiple
        self.start_backup = start_backup

    def watch(self, waves: Waves, done: threading.Event, cancelled: threading.Event) -> None:
        """Until ``done``: look for stragglers every ``CHECK_S``; the backups hold a slot each."""
        while not done.wait(CHECK_S):
            if waves.left() or cancelled.is_set():
                continue
            for rank in stragglers(list(self.ranks.values()), self.multiple, time.time()):
                if not self.queue.take_spare(self.job_id):
                    break
                self.start_backup(rank)
