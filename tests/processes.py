"""Starting the local Lambda runtime as a child process, the same way in every test that needs one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.ports import free_port
from tests.rendezvous.conftest import REPO


@contextmanager
def runtime_process(log: Path, *options: str, env: dict[str, str] | None = None,
                    startup_s: float = 60.0) -> Iterator[str]:
    """``python -m services.worker --port P *options``; yields its endpoint URL once it listens, and
    requires a clean exit on SIGTERM afterwards."""
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.worker", "--port", str(port), *options],
                                   cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while "listening" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
