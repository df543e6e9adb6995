"""Ranks handed to a job's threads a wave at a time, every rank's first attempt in S3 before it is sent.

A restarted coordinator must know every attempt that may be running (:mod:`.orphans`), so an
attempt is written before it is invoked. Written one by one, each rank's thread waited for a
journal PUT before its invoke (0.40x of bare boto3's fan-out at 10,000 no-op ranks). Here the
first attempts of the next ``size`` ranks are declared together, in one PUT, while the threads
still have declared ranks to send: the wait leaves the fan-out's path. ``size`` is
``COSMIC_COORDINATOR_DECLARE_AHEAD`` ranks per thread: with two (3,000 no-op ranks, 8 threads, the
local runtime and moto on two busy cores), the threads found no rank ready for about a quarter of
their time, the next wave's PUT not yet answered, and the PUTs cost the coordinator about 2 ms of
CPU each and moto 3.5 ms: 0.3 ms a rank. With eight, a quarter of the PUTs, and the threads wait
for 1-3% of their time. The price is paid on a restart only: the
ranks declared and not yet sent when the coordinator was killed (at most about one and a half
waves) look in flight, and are awaited for ``COSMIC_COORDINATOR_ORPHAN_START_GRACE_S`` from their
declaration before they run (their never-sent attempt shows ``lost``, billed nothing, and counts
as one of the rank's attempts).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from services import logs


class Waves:
    """Hands out ``todo``'s ranks; ``declare(ranks)`` records their first attempts and returns
    once S3 has them. Thread-safe; one declaration in flight at a time."""

    def __init__(self, todo: deque[int], size: int, declare: Callable[[list[int]], None]) -> None:
        self.todo, self.size, self._declare = todo, max(1, size), declare
        self._ready: deque[int] = deque()
        self._declaring = False
        self._cond = threading.Condition()

    def next(self) -> int | None:
        """The next rank to send, None when there is none left (or a declaration failed)."""
        with self._cond:
            rank = self._ready.popleft() if self._ready else None
            wave = self._take_wave()
        if wave and rank is not None:  # declared off this thread's path: it has a rank to send
            threading.Thread(target=logs.carry(self._run_declare), args=(wave,), name="declare-wave",
                             daemon=True).start()
            return rank
        if wave:
            self._run_declare(wave)
        if rank is not None:
            return rank
        with self._cond:
            while not self._ready and self._declaring:
                self._cond.wait()
            return self._ready.popleft() if self._ready else None

    def left(self) -> bool:
        """Whether any rank is still to be handed out."""
        with self._cond:
            return bool(self.todo or self._ready or self._declaring)

    def _take_wave(self) -> list[int]:
        """Under the lock: the next wave to declare, when the declared ranks run low (half a wave)."""
        if self._declaring or not self.todo or len(self._ready) > self.size // 2:
            return []
        self._declaring = True
        return [self.todo.popleft() for _ in range(min(self.size, len(self.todo)))]

    def _run_declare(self, wave: list[int]) -> None:
        try:
            self._declare(wave)
        except BaseException:
            with self._cond:
                self.todo.extendleft(reversed(wave))  # not declared: not handed out
                self._declaring = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._ready.extend(wave)
            self._declaring = False
            self._cond.notify_all()
