"""The no-op handler of ``lambda_runtime.py``: returns its event, so that only the runtime is timed."""

from typing import Any


def handler(event: Any, context: Any) -> Any:
    return event
