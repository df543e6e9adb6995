"""Starting the local Lambda runtime and the rendezvous server as child processes, the same way in
every test that needs one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.local.processes import healthz, python, start
from services.ports import free_port, free_ports
from tests.common import REPO


@contextmanager
def _child(args: list[str], log: Path, ready: Callable[[], bool], startup_s: float,
           env: dict[str, str] | None = None) -> Iterator[None]:
    """``python -m *args`` from the repository, its output in ``log``; returns once ``ready()``, and
    requires a clean exit on SIGTERM afterwards."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    child = start(python(*args), name=f"python -m {args[0]}", log=log, env=environ, cwd=REPO, stop_timeout=20)
    try:
        child.wait_ready(ready, startup_s)
        yield
    finally:
        assert child.stop() == 0, log.read_text()


@contextmanager
def runtime_process(log: Path, *options: str, env: dict[str, str] | None = None,
                    startup_s: float = 60.0) -> Iterator[str]:
    """``python -m services.local.runtime --port P *options``; yields its endpoint URL once it listens."""
    port = free_port()
    with _child(["services.local.runtime", "--port", str(port), *options], log, lambda: "listening" in log.read_text(),
                startup_s, env):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def rendezvous_process(log: Path, startup_s: float = 15.0) -> Iterator[str]:
    """``python -m services.rendezvous`` on loopback; yields its ``host:port`` once /healthz answers."""
    port, health_port = free_ports(2)
    with _child(["services.rendezvous", "--host", "127.0.0.1", "--port", str(port), "--health-host", "127.0.0.1",
                 "--health-port", str(health_port)], log, lambda: healthz(health_port), startup_s):
        yield f"127.0.0.1:{port}"
