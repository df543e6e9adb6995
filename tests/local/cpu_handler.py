"""A handler for the CPU-share test: two threads busy in C code (hashing releases the GIL), so that
without a limit the process could use two cores; it answers the CPU time it got per wall second."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

BLOCK = b"\0" * (1 << 20)  # hashlib releases the GIL for inputs over 2 KiB


def _spin(until: float) -> None:
    while time.monotonic() < until:
        hashlib.sha256(BLOCK).digest()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    seconds = float(event.get("seconds", 1.0))
    cpu, wall = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=_spin, args=(wall + seconds,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"cpu_per_wall_s": (time.process_time() - cpu) / (time.monotonic() - wall),
            "threads": os.environ.get("COSMIC_WORKER_THREADS")}
