"""A long-lived coordinator keeps only the most recent finished jobs' runners in memory."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from services.coordinator.runners import finished_beyond


def _runner(state: str) -> Any:
    """A stand-in holding only what :func:`finished_beyond` reads: its thread, in the given state."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    if state != "not started":
        thread.start()
    if state == "finished":
        release.set()
        thread.join()
    return SimpleNamespace(thread=thread, release=release)


def test_only_finished_runners_beyond_the_most_recent_are_dropped() -> None:
    runners = {"a": _runner("finished"), "b": _runner("running"), "c": _runner("finished"),
               "d": _runner("finished"), "e": _runner("not started"), "f": _runner("finished")}
    try:
        assert finished_beyond(runners, 2) == ["a", "c"]  # d and f are the two most recent finished
        assert finished_beyond(runners, 4) == []
        assert finished_beyond(runners, 0) == ["a", "c", "d", "f"]  # never b (running) nor e (about to start)
    finally:
        for runner in runners.values():
            runner.release.set()
