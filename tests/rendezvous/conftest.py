"""Fixtures: a real rendezvous server process on loopback, and raw-protocol clients."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.local.processes import Child, healthz, python
from services.local.processes import start as start_child
from services.ports import free_ports
from services.rendezvous.netio import recv_exactly
from services.rendezvous.protocol import MESSAGE_SIZE, decode_address
from tests.common import REPO


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}``."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


@dataclass
class ServerProcess:
    """A rendezvous server started by a test; ``log`` holds what it wrote to stderr."""

    child: Child
    host: str
    port: int
    health_port: int
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as ``{'name{labels}': value}``."""
        return metric_samples(self.get("/metrics")[1])

    def wait_metric(self, key: str, value: float, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics().get(key) == value:
                return
            time.sleep(0.02)
        raise AssertionError(f"{key} did not reach {value}: {self.metrics().get(key)}")

    def stop(self) -> int:
        """SIGTERM; its exit status. A server still running 10 s later is killed, and that fails the test."""
        code = self.child.stop(timeout=10)
        assert not self.child.killed, f"the server ignored SIGTERM for 10 s:\n{self.log}"
        return code


def _nofile_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@pytest.fixture
def hub() -> str:
    """The hub the started servers run (``--hub``); the server tests override this fixture to run
    every test against both hubs (:func:`hub_param`)."""
    return "auto"


def hub_param(request: pytest.FixtureRequest) -> str:
    """``request.param`` as a hub, skipping the C hub where it is not built."""
    from services.rendezvous.chub import MISSING, c_available

    if request.param == "c" and not c_available():
        pytest.skip(f"the C hub is not built (pip install -e . with a C compiler builds it): {MISSING}")
    return str(request.param)


@pytest.fixture
def start_server(integration: None, tmp_path: Path, hub: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with the given options (``name_timeout=0.5`` -> ``--name-timeout 0.5``)."""
    started: list[ServerProcess] = []

    def start(*, nofile: int | None = None, env: dict[str, str] | None = None, host: str = "127.0.0.1",
              **options: object) -> ServerProcess:
        options.setdefault("hub", hub)
        port, health_port = free_ports(2)
        args = ["--host", host, "--port", str(port), "--health-host", "127.0.0.1", "--health-port", str(health_port)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        log_path = tmp_path / f"server-{len(started)}.log"
        child = start_child(python("services.rendezvous", *args), name="the rendezvous server", log=log_path,
                            env={**os.environ, **(env or {})}, cwd=REPO,
                            preexec=_nofile_limit(nofile) if nofile else None)
        server = ServerProcess(child, "127.0.0.1", port, health_port, log_path)
        started.append(server)
        child.wait_ready(lambda: healthz(health_port), 15, poll=0.02)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with short timeouts, so that tests of them run in under a second."""
    return start_server(name_timeout=0.5, waiter_ttl=2.0)


_OPEN_SOCKETS: list[socket.socket] = []


def track(sock: socket.socket) -> socket.socket:
    """Close ``sock`` when the test ends, whatever happens to it before."""
    _OPEN_SOCKETS.append(sock)
    return sock


@pytest.fixture(autouse=True)
def _close_tracked_sockets() -> Iterator[None]:
    yield
    while _OPEN_SOCKETS:
        _OPEN_SOCKETS.pop().close()


def raw_client(server: ServerProcess, name: bytes | None = None, timeout: float = 5.0) -> socket.socket:
    """A client that speaks the protocol as the reference client does: the name, no terminator."""
    sock = track(socket.create_connection((server.host, server.port), timeout=timeout))
    if name is not None:
        sock.sendall(name)
    return sock


def read_message(sock: socket.socket) -> tuple[str, int]:
    return decode_address(recv_exactly(sock, MESSAGE_SIZE))


def closed_without_reply(sock: socket.socket, within: float = 3.0) -> bool:
    """True when the server closes ``sock`` within ``within`` seconds having sent nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def silent_for(sock: socket.socket, seconds: float) -> bool:
    """True when nothing arrives (and no close) on ``sock`` for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    return False


def log_events(server: ServerProcess) -> list[dict[str, object]]:
    """The server's JSON log lines (for servers started with ``log_format='json'``)."""
    return [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
