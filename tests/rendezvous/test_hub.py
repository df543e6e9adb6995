"""The pairing engines in-process: the C hub (on its own thread), and the Python hub on both of its
event sets, epoll (Linux) and the ``selectors`` fallback used where epoll is missing (kqueue), which
must also be told when a descriptor closes."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.rendezvous import hub
from services.rendezvous.config import ServerSettings
from services.rendezvous.server import RendezvousServer
from tests.rendezvous.conftest import closed_without_reply, hub_param, read_message, silent_for, track


class Running:
    """A server on an event loop in a thread of the test process."""

    def __init__(self, settings: ServerSettings) -> None:
        self.server = RendezvousServer(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.address[1]

    def client(self, name: bytes | None) -> socket.socket:
        sock = track(socket.create_connection(("127.0.0.1", self.port), timeout=5))
        if name is not None:
            sock.sendall(name)
        return sock

    def wait(self, what: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.01)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=["c", "epoll", "selectors"])
def running(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, integration: None) -> Iterator[Running]:
    engine = "c" if request.param == "c" else "python"
    if request.param == "c":
        hub_param(request)
    elif request.param == "selectors":
        monkeypatch.setattr(hub, "_event_set", hub._SelectorSet)
    elif not hasattr(hub.select, "epoll"):
        pytest.skip("no epoll on this platform")
    server = Running(ServerSettings(host="127.0.0.1", port=0, health_port=-1, name_timeout=0.3, waiter_ttl=5.0,
                                    hub=engine))
    assert server.server.render_metrics().count(f'rendezvous_hub_info{{hub="{engine}"}} 1') == 1
    yield server
    server.stop()


def test_pairs_departs_and_times_out(running: Running) -> None:
    a, b = running.client(b"n"), running.client(b"n")
    assert read_message(a) == a.getsockname()[:2] and read_message(b) == b.getsockname()[:2]
    assert read_message(a) == b.getsockname()[:2] and read_message(b) == a.getsockname()[:2]
    assert a.recv(1) == b"" and b.recv(1) == b""

    gone = running.client(b"gone")
    read_message(gone)
    gone.close()
    running.wait(lambda: running.server.metrics.waiters_gone_total == 1)
    later = running.client(b"gone")
    read_message(later)
    assert silent_for(later, 0.2), "never paired with the departed waiter"

    running.client(None).close()  # a bare probe
    silent = running.client(None)
    assert closed_without_reply(silent, within=3.0)
    assert running.server.metrics.timeouts["name"] == 1
    assert running.server.metrics.pairings_total == 1


def test_shutdown_closes_every_client(running: Running) -> None:
    waiters = [running.client(b"w%d" % index) for index in range(5)]
    for waiter in waiters:
        read_message(waiter)
    running.stop()
    for waiter in waiters:
        assert closed_without_reply(waiter)
    assert running.server.metrics.rejected["shutdown"] == 5
    running.stop = lambda: None  # type: ignore[method-assign]  # stopped already


def test_out_of_descriptors_pauses_accepting_then_resumes(running: Running) -> None:
    """accept() failing for lack of descriptors (EMFILE) pauses accepting for a second, counted as
    ``accept_failed``, instead of spinning on a listener that stays readable; then pairing goes on.
    The server is in this process, so lowering this process's descriptor limit starves its accept."""
    a, b = track(socket.socket()), track(socket.socket())  # their descriptors exist before the limit drops
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left to accept into
    try:
        for sock in (a, b):
            sock.connect(("127.0.0.1", running.port))  # the kernel completes it; accept() cannot
            sock.sendall(b"starved")
        running.wait(lambda: running.server.metrics.rejected["accept_failed"] >= 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    paused_at = time.monotonic()
    a.settimeout(5)
    b.settimeout(5)
    assert read_message(a) == a.getsockname()[:2] and read_message(b) == b.getsockname()[:2]
    assert read_message(a) == b.getsockname()[:2], "accepting resumed and the pair was made"
    assert time.monotonic() - paused_at > 0.5, "it paused rather than retrying at once"
    assert running.server.metrics.pairings_total == 1
