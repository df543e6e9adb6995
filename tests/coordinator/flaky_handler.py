"""The real worker handler, with three things a test can ask for, without touching the worker's code.

- rank 1 fails its first attempt in jobs whose result path says "flaky": what a transient worker
  failure looks like to the coordinator (a function error);
- every rank of a job whose result path says "slow" first sleeps ``SLOW_S``: a job that holds the
  function's capacity long enough for another to queue behind it;
- an event ``{"hold_s": seconds}`` (not a worker event) only holds its sandbox that long: someone
  else using the function's capacity, which the coordinator cannot see, so its invocations are throttled;
- rank 1's first attempt in jobs whose result path says "straggler" is up to ``STRAGGLER_S`` slower,
  looking at its markers every ``CHECK_S`` as the per-batch hook does: a slow sandbox that a
  speculative backup can overtake (it then stops as superseded).

Every other event goes straight to the real handler.
"""

from __future__ import annotations

import time
from typing import Any

from services.contracts import parse_event
from services.s3store import S3Store
from services.worker.control import Markers
from services.worker.errors import JobCancelled, Superseded
from services.worker.handler import handler as real_handler

SLOW_S = 3.0
STRAGGLER_S = 120.0
CHECK_S = 0.2


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "hold_s" in event:
        time.sleep(float(event["hold_s"]))
        return {"held_s": event["hold_s"]}
    result_path = str(event.get("result_path", ""))
    if "flaky" in result_path and event.get("rank") == 1 and event.get("attempt") == 1:
        raise RuntimeError("transient failure injected by the test (rank 1, attempt 1)")
    if "slow" in result_path:
        time.sleep(SLOW_S)
    if "straggler" in result_path and event.get("rank") == 1 and event.get("attempt") == 1:
        _straggle(event)
    return real_handler(event, context)


def _straggle(event: dict[str, Any]) -> None:
    """Be slow, but stop being slow once another attempt holds the rank's commit claim."""
    markers = Markers(S3Store(), parse_event(event), interval=CHECK_S)
    deadline = time.monotonic() + STRAGGLER_S
    while time.monotonic() < deadline:
        try:
            markers.stop_if_asked()
        except (Superseded, JobCancelled):
            return  # the real handler now finds the claim taken (or the job cancelled) and says so
        time.sleep(CHECK_S)
