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
from typing import Any

import pytest

from services.rendezvous import hub
from services.rendezvous.config import ServerSettings
from services.rendezvous.server import RendezvousServer
from tests.rendezvous.conftest import (
    closed_without_reply,
    hub_param,
    metric_samples,
    read_message,
    silent_for,
    track,
)


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


def start_running(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Running:
    """A server on the hub ``request.param`` names (``c``, ``epoll`` or ``selectors``)."""
    engine = "c" if request.param == "c" else "python"
    if request.param == "c":
        hub_param(request)
    elif request.param == "selectors":
        monkeypatch.setattr(hub, "_event_set", hub._SelectorSet)
    elif not hasattr(hub.select, "epoll"):
        pytest.skip("no epoll on this platform")
    server = Running(ServerSettings(host="127.0.0.1", port=0, health_port=-1, hub=engine, **settings))
    assert server.server.render_metrics().count(f'rendezvous_hub_info{{hub="{engine}"}} 1') == 1
    return server


@pytest.fixture(params=["c", "epoll", "selectors"])
def running(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, integration: None) -> Iterator[Running]:
    server = start_running(request, monkeypatch, name_timeout=0.3, waiter_ttl=5.0)
    yield server
    server.stop()


@pytest.fixture(params=["c", "epoll", "selectors"])
def unswept(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, integration: None) -> Iterator[Running]:
    """Long deadlines, so a sweep comes only once a second: a new waiter is not in the epoll set yet."""
    server = start_running(request, monkeypatch, name_timeout=60.0, waiter_ttl=60.0)
    assert server.server._hub is not None and server.server._hub.sweep_interval == 1.0
    yield server
    server.stop()


def open_connections(running: Running) -> int:
    return int(metric_samples(running.server.render_metrics())["rendezvous_open_connections"])


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


def test_a_waiter_gone_before_it_is_watched_is_never_paired(unswept: Running) -> None:
    """A new waiter joins the epoll set at the next sweep; before that, the partner who comes asks it
    directly: one that left is counted gone and the newcomer waits instead of meeting it."""
    gone = unswept.client(b"early")
    read_message(gone)
    gone.close()
    time.sleep(0.05)  # its FIN is in; the next sweep is up to a second away
    later = unswept.client(b"early")
    read_message(later)
    assert silent_for(later, 0.2), "never paired with the departed waiter"
    assert unswept.server.metrics.waiters_gone_total == 1 and unswept.server.metrics.pairings_total == 0
    partner = unswept.client(b"early")
    assert read_message(partner) == partner.getsockname()[:2]
    assert read_message(partner) == later.getsockname()[:2] and read_message(later) == partner.getsockname()[:2]


def test_a_waiter_sending_more_before_it_is_watched_is_rejected(unswept: Running) -> None:
    chatty = unswept.client(b"chat")
    read_message(chatty)
    chatty.sendall(b"more")
    time.sleep(0.05)
    later = unswept.client(b"chat")
    read_message(later)
    assert closed_without_reply(chatty), "rejected, never given a peer"
    assert silent_for(later, 0.2), "the newcomer waits"
    assert unswept.server.metrics.rejected["unexpected_data"] == 1 and unswept.server.metrics.pairings_total == 0


def test_a_waiter_left_alone_is_watched_from_the_next_sweep(unswept: Running) -> None:
    """No partner comes: its departure is noticed within a sweep (a second here), not at its ttl."""
    alone = unswept.client(b"alone")
    read_message(alone)
    alone.close()
    unswept.wait(lambda: unswept.server.metrics.waiters_gone_total == 1, timeout=3.0)
    assert unswept.server.metrics.waiters_gone_total == 1 and open_connections(unswept) == 0


def test_a_silent_client_waits_in_the_kernel_for_defer_accept(running: Running) -> None:
    """The listener defers a connection until its first bytes (defer_accept, 1 s by default): a silent
    client costs the server nothing for that second, then is accepted and dropped after its name
    timeout (0.3 s here). A named client is accepted as soon as its name comes."""
    started = time.monotonic()
    silent = running.client(None)
    time.sleep(0.5)
    assert open_connections(running) == 0, "held by the kernel, not accepted"
    named = running.client(b"prompt")
    assert read_message(named) == named.getsockname()[:2]
    assert open_connections(running) == 1
    assert closed_without_reply(silent, within=4.0)
    assert time.monotonic() - started > 1.2, "accepted after the deferral, then given its name timeout"
    assert running.server.metrics.timeouts["name"] == 1


def segments_in(sock: socket.socket) -> int:
    """Segments ``sock`` has received (Linux's ``tcp_info.tcpi_segs_in``)."""
    return int.from_bytes(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 144)[140:144], "little")


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO") or not hasattr(socket, "MSG_MORE"), reason="Linux's TCP_INFO")
def test_the_last_reply_and_the_close_share_one_segment(running: Running) -> None:
    """Message 2 waits for the close that follows it (MSG_MORE): one segment carries both, not two."""
    waiter = running.client(b"seg")
    read_message(waiter)
    before = segments_in(waiter)
    joiner = running.client(b"seg")
    assert read_message(joiner) == joiner.getsockname()[:2] and read_message(joiner) == waiter.getsockname()[:2]
    assert read_message(waiter) == joiner.getsockname()[:2] and waiter.recv(1) == b""
    assert segments_in(waiter) - before == 1, "message 2 and the FIN in one segment"


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
    assert running.server.metrics.pairings_total == 1, "counted before the pair has its answer"
