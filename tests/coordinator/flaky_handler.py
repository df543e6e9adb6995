"""The real worker handler, except that rank 1 fails its first attempt in jobs whose result path says "flaky".

What a transient worker failure looks like to the coordinator (a function error), without
touching the worker's code; every other event goes straight to the real handler.
"""

from __future__ import annotations

from typing import Any

from services.worker.handler import handler as real_handler


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "flaky" in str(event.get("result_path", "")) and event.get("rank") == 1 and event.get("attempt") == 1:
        raise RuntimeError("transient failure injected by the test (rank 1, attempt 1)")
    return real_handler(event, context)
