"""The real worker handler, with three things a test can ask for, without touching the worker's code.

- rank 1 fails its first attempt in jobs whose result path says "flaky": what a transient worker
  failure looks like to the coordinator (a function error);
- every rank of a job whose result path says "slow" first sleeps ``SLOW_S``: a job that holds the
  function's capacity long enough for another to queue behind it;
- an event ``{"hold_s": seconds}`` (not a worker event) only holds its sandbox that long: someone
  else using the function's capacity, which the coordinator cannot see, so its invocations are throttled.

Every other event goes straight to the real handler.
"""

from __future__ import annotations

import time
from typing import Any

from services.worker.handler import handler as real_handler

SLOW_S = 3.0


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "hold_s" in event:
        time.sleep(float(event["hold_s"]))
        return {"held_s": event["hold_s"]}
    result_path = str(event.get("result_path", ""))
    if "flaky" in result_path and event.get("rank") == 1 and event.get("attempt") == 1:
        raise RuntimeError("transient failure injected by the test (rank 1, attempt 1)")
    if "slow" in result_path:
        time.sleep(SLOW_S)
    return real_handler(event, context)
