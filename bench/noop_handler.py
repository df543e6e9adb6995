"""No-op handlers: ``handler`` returns its event, so that only the runtime is timed
(``lambda_runtime.py``); ``succeed`` answers what a worker that succeeded answers (``status``), so
that the coordinator takes each rank as done (``coordinator.py``) and nothing else is timed."""

from typing import Any


def handler(event: Any, context: Any) -> Any:
    return event


def succeed(event: Any, context: Any) -> Any:
    return {"status": "succeeded", "rank": event.get("rank") if isinstance(event, dict) else None}
