"""Starting the local Lambda runtime and the rendezvous server as child processes, the same way in
every test that needs one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.local.processes import healthz, python, start
from services.ports import free_port, free_ports
from tests.common import REPO, Api, Servers, http_ok


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


@contextmanager
def coordinators(env: Callable[..., dict[str, str]], folder: Path) -> Iterator[Callable[..., Api]]:
    """Yields ``start(token="", **settings) -> Api``, which starts a coordinator child with
    ``env(**settings)`` and its log in ``folder``; every one started is stopped at the end."""
    started: list[Api] = []

    def start_api(token: str = "", **settings: str) -> Api:
        started.append(start_coordinator_child(env(**settings), folder / f"coordinator-{len(started)}.log", token))
        return started[-1]

    try:
        yield start_api
    finally:
        for api in started:
            api.child.stop()


@pytest.fixture
def start_coordinator(stack: Servers, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """``start(token="", **settings) -> Api`` against the folder's own ``stack`` fixture; every
    coordinator started is stopped after the test. A conftest imports it to offer it."""
    pytest.importorskip("fastapi")
    with coordinators(stack.env, tmp_path) as start_api:
        yield start_api


@pytest.fixture
def api(start_coordinator: Callable[..., Api]) -> Api:
    """One coordinator with the default settings (imported by a conftest, as above)."""
    return start_coordinator()


def start_coordinator_child(env: dict[str, str], log: Path, token: str = "", startup_s: float = 30.0) -> Api:
    """``python -m services.coordinator`` on a free port with ``env`` (which must carry the AWS
    endpoints); returns its client once /healthz answers. The caller stops ``api.child``."""
    port = free_port()
    child = start(python("services.coordinator", "--port", str(port)), name="the coordinator", log=log,
                  env={"PYTHONPATH": str(REPO), **env, "COSMIC_API_TOKEN": token},
                  cwd=REPO, stop_timeout=15)
    api = Api(f"http://127.0.0.1:{port}", child, log, token)
    child.wait_ready(lambda: http_ok(api.url + "/healthz"), startup_s)
    return api
