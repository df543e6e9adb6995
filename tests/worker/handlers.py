"""A trivial handler for the runtime's tests: what it does is chosen by the event's ``action``."""

from __future__ import annotations

import os
import time
from typing import Any


def dispatch(event: dict[str, Any], context: Any) -> Any:
    action = event.get("action", "echo")
    if action == "echo":
        print(f"echo {event.get('value')}")
        return {"value": event.get("value"), "request_id": context.aws_request_id,
                "function": context.function_name, "memory": context.memory_limit_in_mb,
                "threads": os.environ.get("COSMIC_WORKER_THREADS"), "pid": os.getpid()}
    if action == "raise":
        raise ValueError(f"asked to fail: {event.get('value')}")
    if action == "sleep":
        time.sleep(float(event["seconds"]))
        return {"slept": event["seconds"]}
    if action == "exit":
        os._exit(int(event.get("code", 3)))
    if action == "big":
        return "x" * int(event["bytes"])
    if action == "touch":
        with open(event["path"], "w") as marker:
            marker.write(context.aws_request_id)
        return None
    if action == "allocate":
        block = bytearray(int(event["megabytes"]) << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so that it counts in RSS
        return {"allocated": len(block)}
    raise KeyError(action)
