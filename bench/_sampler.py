"""A sampling profiler for every thread of this process (py-spy is not installed here).

Why sampling: the coordinator's time is spread over a job thread, its rank threads, the journal's
flush thread and botocore; cProfile sees one thread and slows every call it sees. Every
``interval_s`` this thread takes ``sys._current_frames()`` and counts, per function, the samples
where it is on a stack (inclusive) and on top of it (exclusive); threads waiting in a socket or a
lock are on top in ``wait``/``recv_into``/``acquire`` and are left out of the "busy" table, so
what remains is where the CPU went. :class:`CollectorPauses` adds what no sample shows: the
garbage collector's stops of every thread.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import Counter
from types import FrameType
from typing import Any

#: Frames on top that mean the thread waits, not works.
IDLE = {"wait", "acquire", "recv_into", "readinto", "select", "poll", "sleep", "_wait_for_tstate_lock", "accept",
        "readline", "recv", "result", "join", "get", "_worker"}


def _name(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename.rsplit('/', 2)[-2:][-1]}:{code.co_name}"


class Ticking:
    """Calls ``tick()`` every ``interval_s`` on a thread of its own while in the ``with`` block."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Ticking:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.tick()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()


class Sampler(Ticking):
    """``with Sampler() as s: ...``; then ``s.report()`` lists the busiest functions."""

    def __init__(self, interval_s: float = 0.005) -> None:
        super().__init__(interval_s)
        self.inclusive: Counter[str] = Counter()
        self.exclusive: Counter[str] = Counter()
        self.busy = 0

    def tick(self) -> None:
        me = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            if ident == me or frame.f_code.co_name in IDLE:
                continue
            self.busy += 1
            self.exclusive[_name(frame)] += 1
            seen = set()
            walk: FrameType | None = frame
            while walk is not None:
                name = _name(walk)
                if name not in seen:
                    seen.add(name)
                    self.inclusive[name] += 1
                walk = walk.f_back

    def report(self, top: int = 25) -> str:
        lines = [f"{self.busy} busy samples every {self.interval_s * 1e3:g} ms; inclusive % (exclusive %):"]
        for name, count in self.inclusive.most_common(top):
            share, own = 100 * count / max(1, self.busy), 100 * self.exclusive[name] / max(1, self.busy)
            lines.append(f"  {share:5.1f}% ({own:4.1f}%)  {name}")
        return "\n".join(lines)


def timed(seconds: list[float], function):  # type: ignore[no-untyped-def]
    """``function`` that appends each call's wall seconds to ``seconds``."""
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)
    return wrapper


class CollectorPauses:
    """The garbage collector's pauses while in the ``with`` block: seconds in all, the longest, and
    the collections of each generation. Each pause stops every thread of the process."""

    def __init__(self) -> None:
        self.total_s = self.longest_s = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total_s += pause
        self.longest_s = max(self.longest_s, pause)
        self.collections[info["generation"]] += 1

    def figures(self) -> dict[str, Any]:
        """What a benchmark's run records: milliseconds in all, the longest, collections per generation."""
        return {"gc_ms": self.total_s * 1e3, "gc_longest_ms": self.longest_s * 1e3, "collections": self.collections}

    def __enter__(self) -> CollectorPauses:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._note)
