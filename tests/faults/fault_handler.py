"""The real worker handler, counted and slowed where a fault test asks, inside the runtime's sandboxes.

What it adds, none of it in the worker's code:

- **a count**: every invocation appends one JSON line ``{"job_id", "rank", "attempt", "pid",
  "at"}`` to ``$COSMIC_TEST_INVOCATIONS`` before anything else happens, so a test knows exactly
  which attempts reached a sandbox (and which process to SIGKILL), whatever the coordinator says;
  entering a phase appends ``{"job_id", "rank", "attempt", "phase"}`` there too;
- **delays**, so that a fault lands in the phase the test names: a JSON file
  ``$COSMIC_TEST_DIRECTIVES/{result_path with / as _}.json`` (written by the test before it
  submits) may hold ``hold_s`` (seconds before the worker starts, the ``starting`` phase),
  ``download_s`` (more seconds per partition download), ``batch_s`` (more seconds per batch of
  inference) and ``before_collective_s``, each either a number (every rank) or ``{"rank": s}``,
  and ``first_attempt_only`` (the delays apply to attempt 1 alone);
- **someone else**: an event ``{"hold_s": seconds}`` (not a worker event) only holds its sandbox
  that long, taking capacity the coordinator cannot see, so its invocations are throttled.

A delay only stretches a real phase (the download still comes from S3, the batch still runs the
model): the fault itself is always a real process killed or a real server stopped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from services.worker import native
from services.worker.control import Markers
from services.worker.feed import PartitionFeed
from services.worker.handler import handler as real_handler

#: The directives of the invocation this sandbox is running (one at a time), or {}.
_current: dict[str, Any] = {}
_write_lock = threading.Lock()


def _note(record: dict[str, Any]) -> None:
    """Append one line to the invocation log; a single ``write`` on an O_APPEND file is atomic."""
    path = os.environ.get("COSMIC_TEST_INVOCATIONS")
    if path:
        line = (json.dumps(record) + "\n").encode()
        with _write_lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def directives_path(folder: Path, result_path: str) -> Path:
    """Where the directives for jobs writing under ``result_path`` are read from."""
    return folder / (result_path.strip("/").replace("/", "_") + ".json")


def _directives(event: dict[str, Any]) -> dict[str, Any]:
    folder = os.environ.get("COSMIC_TEST_DIRECTIVES")
    if not folder:
        return {}
    path = directives_path(Path(folder), str(event.get("result_path", "")))
    found = json.loads(path.read_text()) if path.exists() else {}
    if found.get("first_attempt_only") and event.get("attempt", 1) != 1:
        return {}
    return found


def _delay(name: str) -> float:
    """Seconds of the directive ``name`` for the current rank (0 when none)."""
    value = _current.get(name)
    if isinstance(value, dict):
        value = value.get(str(_current.get("_rank")), 0)
    return float(value or 0)


def _phase(phase: str) -> None:
    _note({"job_id": _current.get("_job_id"), "rank": _current.get("_rank"), "attempt": _current.get("_attempt"),
           "phase": phase, "at": time.time()})


# -- the phases a directive may stretch: wrapped once, when a sandbox imports this module ---------
_fetch = PartitionFeed._fetch
_hook = Markers.stop_if_asked
_summarise = native.summarise


def _slow_fetch(self: PartitionFeed, key: str) -> Any:
    _phase("downloading")
    time.sleep(_delay("download_s"))
    return _fetch(self, key)


def _slow_hook(self: Markers) -> None:
    if not _current.get("_inferring"):
        _current["_inferring"] = True
        _phase("inferring")
    time.sleep(_delay("batch_s"))
    _hook(self)


def _slow_summarise(*args: Any, **kwargs: Any) -> str:
    _phase("collective")
    time.sleep(_delay("before_collective_s"))
    return _summarise(*args, **kwargs)


PartitionFeed._fetch = _slow_fetch  # type: ignore[method-assign]
Markers.stop_if_asked = _slow_hook  # type: ignore[method-assign]
native.summarise = _slow_summarise


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "hold_s" in event:  # not a worker event: someone else holding a sandbox (the throttling cases)
        time.sleep(float(event["hold_s"]))
        return {"held_s": event["hold_s"]}
    _note({"job_id": event.get("job_id"), "rank": event.get("rank"), "attempt": event.get("attempt"),
           "pid": os.getpid(), "at": time.time()})
    _current.clear()
    _current.update(_directives(event), _job_id=event.get("job_id"), _rank=event.get("rank"),
                    _attempt=event.get("attempt"))
    time.sleep(_delay("hold_s"))
    return real_handler(event, context)
