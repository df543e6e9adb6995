"""A function's capacity, and the queue of jobs waiting for it.

Lambda runs at most so many invocations of a function at once: its reserved concurrency when set,
else the account's unreserved concurrency (:meth:`.invoker.Invoker.capacity` reads either; the
local runtime answers with its sandbox count). Invoking beyond it is answered 429, so instead of
sending every rank and letting the surplus be throttled, jobs wait here for slots, first come
first served, and each rank holds one slot while it runs (its retries included).

The queue is per function and FIFO by job: a slot goes to the earliest job that is asking for
one, so a job queued behind another starts when the jobs before it have all their ranks running
(or want no more slots), never in between. A job with the communicator asks for all its slots at
once (its ranks must meet); one without asks slot by slot, and so may run fewer ranks at once than
its world size. Where the capacity is unknown (neither API answers) the queue does not limit, and
the invoker's throttle waiting is what paces the ranks.

Every wait is bounded: by the job's deadline and by its stop event (a cancel).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

#: Longest sleep between checks of a waiting job's stop event and deadline.
_POLL_S = 0.2


@dataclass(frozen=True)
class Capacity:
    """Concurrent executions a function may have, and where the number comes from (for messages)."""

    limit: int
    source: str


class FunctionQueue:
    """The slots of one function's capacity, handed to jobs in the order they entered.

    ``limit`` None: unknown capacity, every request is granted at once. Thread-safe.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._used = 0
        self._tickets = itertools.count()
        self._order: dict[str, int] = {}  # job id -> its place in line, while it may still start ranks
        self._asking: dict[str, int] = {}  # job id -> slots its threads are waiting for

    @property
    def limit(self) -> int | None:
        return self._limit

    def set_limit(self, limit: int | None) -> None:
        """The capacity as last read (it changes when someone sets the function's concurrency)."""
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def enter(self, job_id: str) -> None:
        """Take a place at the end of the line (a no-op for a job already in it)."""
        with self._cond:
            self._order.setdefault(job_id, next(self._tickets))

    def leave(self, job_id: str) -> None:
        """The job starts no more ranks: its waiting requests fail, and the jobs behind it move up."""
        with self._cond:
            self._order.pop(job_id, None)
            self._cond.notify_all()

    def free_now(self, job_id: str, count: int = 1) -> bool:
        """Whether ``acquire(job_id, count)`` would be granted without waiting."""
        with self._cond:
            return self._grantable(job_id, count)

    def acquire(self, job_id: str, count: int, stop: threading.Event, deadline: float) -> bool:
        """Wait for ``count`` slots for ``job_id`` (in line by :meth:`enter`); False when ``stop`` is
        set, the monotonic ``deadline`` passes, or the job left the line first."""
        with self._cond:
            self._asking[job_id] = self._asking.get(job_id, 0) + count
            try:
                while True:
                    if job_id not in self._order or stop.is_set():
                        return False
                    if self._grantable(job_id, count):
                        self._used += count
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(_POLL_S, left))
            finally:
                self._asking[job_id] -= count
                if not self._asking[job_id]:
                    del self._asking[job_id]
                self._cond.notify_all()  # a job behind this one may now be first among those asking

    def take_spare(self, job_id: str) -> bool:
        """One slot at once for an optional extra of ``job_id`` (a speculative backup), or False:
        only a free slot that no other job in line is waiting for, so the extra delays nobody."""
        with self._cond:
            waiting = any(other != job_id and other in self._order for other in self._asking)
            if waiting or not self._fits(1):
                return False
            self._used += 1
            return True

    def release(self, count: int = 1) -> None:
        with self._cond:
            self._used = max(0, self._used - count)
            self._cond.notify_all()

    def position(self, job_id: str) -> int | None:
        """1 + the jobs ahead of ``job_id`` that are waiting for slots; None when it is not in line."""
        with self._cond:
            mine = self._order.get(job_id)
            if mine is None:
                return None
            return 1 + sum(1 for other in self._asking if other != job_id and self._order.get(other, mine) < mine)

    def _grantable(self, job_id: str, count: int) -> bool:
        if job_id not in self._order:
            return False
        if not self._fits(count):
            return False
        mine = self._order[job_id]
        return not any(self._order.get(other, mine) < mine for other in self._asking if other != job_id)

    def _fits(self, count: int) -> bool:
        """Whether ``count`` more slots fit (a request above the whole capacity fits when nothing runs)."""
        return self._limit is None or self._used + count <= self._limit or self._used == 0
