"""Starting the local Lambda runtime and the rendezvous server as child processes, the same way in
every test that needs one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.ports import free_port, free_ports
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


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def rendezvous_process(log: Path, startup_s: float = 15.0) -> Iterator[str]:
    """``python -m services.rendezvous`` on loopback; yields its ``host:port`` once /healthz answers,
    and requires a clean exit on SIGTERM afterwards."""
    port, health_port = free_ports(2)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.rendezvous", "--host", "127.0.0.1", "--port",
                                    str(port), "--health-host", "127.0.0.1", "--health-port", str(health_port)],
                                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while not _healthy(health_port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
