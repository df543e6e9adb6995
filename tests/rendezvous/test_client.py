"""pair() against our server and against a stand-in that behaves exactly like the reference."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.ports import free_port
from services.rendezvous import (
    ClientSettings,
    InvalidName,
    PeerGone,
    ProtocolError,
    RendezvousError,
    RendezvousTimeout,
    pair,
    pair_async,
)
from services.rendezvous.protocol import encode_address
from tests.rendezvous.conftest import ServerProcess


class ReferenceStandIn:
    """A server that follows PROTOCOL.md exactly and nothing more: one recv(100), cut at NUL,
    message 1 at once, FIFO pairing in twos, message 2 to both, close. No hardening at all.
    ``reply`` can replace message 1 to test how the client meets a broken server."""

    def __init__(self, reply: Callable[[tuple[str, int]], bytes] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.names: list[bytes] = []
        self.reply = reply or (lambda address: encode_address(*address))
        self._waiting: dict[bytes, tuple[socket.socket, tuple[str, int]]] = {}
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, address = self.listener.accept()
            except OSError:
                return
            raw = conn.recv(100)
            name = raw.split(b"\0", 1)[0]
            self.names.append(raw)
            conn.sendall(self.reply(address))
            if name in self._waiting:
                other, other_address = self._waiting.pop(name)
                other.sendall(encode_address(*address))
                conn.sendall(encode_address(*other_address))
                other.close()
                conn.close()
            else:
                self._waiting[name] = (conn, address)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        for conn, _ in self._waiting.values():
            conn.close()
        self._thread.join(timeout=5)


@pytest.fixture
def stand_in(integration: None) -> Iterator[ReferenceStandIn]:
    server = ReferenceStandIn()
    yield server
    server.close()


def pair_both(name: str, port: int, host: str = "127.0.0.1", timeout: float = 10.0
              ) -> tuple[socket.socket, socket.socket]:
    """Run both sides of one pairing in two threads; returns (first, second)."""
    results: dict[int, socket.socket | BaseException] = {}

    def side(index: int) -> None:
        try:
            results[index] = pair(name, host, port, timeout=timeout)
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=side, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    for result in results.values():
        if isinstance(result, BaseException):
            for other in results.values():
                if isinstance(other, socket.socket):
                    other.close()
            raise result
    return results[0], results[1]  # type: ignore[return-value]


def assert_linked(a: socket.socket, b: socket.socket) -> None:
    assert a.getpeername() == b.getsockname() and b.getpeername() == a.getsockname()
    a.sendall(b"ping")
    assert b.recv(4, socket.MSG_WAITALL) == b"ping"
    b.sendall(b"pong")
    assert a.recv(4, socket.MSG_WAITALL) == b"pong"


def test_pairs_through_a_reference_server_byte_for_byte(stand_in: ReferenceStandIn) -> None:
    a, b = pair_both("legacy-name", stand_in.port)
    with a, b:
        assert_linked(a, b)
    assert stand_in.names == [b"legacy-name", b"legacy-name"], "the name goes unterminated, as TCPunch sends it"


def test_pairs_through_our_server(server: ServerProcess) -> None:
    a, b = pair_both("ours", server.port)
    with a, b:
        assert_linked(a, b)
        assert a.gettimeout() is None, "pair() returns a blocking socket"


def test_dns_name_for_the_server(server: ServerProcess) -> None:
    a, b = pair_both("by-name", server.port, host="localhost")
    with a, b:
        assert_linked(a, b)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_two_hundred_pairings_leak_no_descriptor_or_thread(server: ServerProcess) -> None:
    for sock in pair_both("warm-up", server.port):  # first use initialises lazily allocated state
        sock.close()
    fds, threads = _open_fds(), threading.active_count()
    for index in range(200):
        a, b = pair_both(f"leak-{index}", server.port)
        a.close()
        b.close()
    with pytest.raises(RendezvousTimeout):  # a failing path must clean up too
        pair("nobody-else", "127.0.0.1", server.port, timeout=0.2)
    assert _open_fds() == fds
    assert threading.active_count() == threads


def test_many_threads_pair_at_once(server: ServerProcess) -> None:
    pairs = 24
    results: dict[tuple[int, int], socket.socket] = {}
    errors: list[BaseException] = []

    def side(index: int, role: int) -> None:
        try:
            results[index, role] = pair(f"crowd-{index}", "127.0.0.1", server.port, timeout=20)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=side, args=(i, r)) for i in range(pairs) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert not errors
        for index in range(pairs):
            a, b = results[index, 0], results[index, 1]
            a.sendall(b"%04d" % index)
            assert b.recv(4, socket.MSG_WAITALL) == b"%04d" % index, "each socket reaches its own partner"
    finally:
        for sock in results.values():
            sock.close()


def _time_wait_count() -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            count += sum(1 for row in list(rows)[1:] if row.split()[3] == "06")
    return count


def test_busy_host_full_of_time_wait(server: ServerProcess) -> None:
    """PROTOCOL.md: connect-then-bind fails with EADDRINUSE once many TIME_WAIT sockets exist;
    bind-then-connect must not. A burst of pairings whose links we close first fills the table."""
    for index in range(400):
        a, b = pair_both(f"burst-{index}", server.port)
        a.close()  # the active closer keeps TIME_WAIT: on this host, both ends are ours
        b.close()
    assert _time_wait_count() >= 400, "the burst must have left the host busy"
    for index in range(100):
        a, b = pair_both(f"after-burst-{index}", server.port)
        with a, b:
            assert_linked(a, b)


def test_timeout_names_the_phase(server: ServerProcess) -> None:
    started = time.monotonic()
    with pytest.raises(RendezvousTimeout) as caught:
        pair("alone", "127.0.0.1", server.port, timeout=0.3)
    assert caught.value.phase == "wait_peer"
    assert 0.25 < time.monotonic() - started < 1.0
    assert "alone" in str(caught.value) and str(server.port) in str(caught.value)


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(RendezvousError, match="connect failed"):
        pair("x", "127.0.0.1", free_port(), timeout=2)


def test_unresolvable_host() -> None:
    with pytest.raises(RendezvousError, match="cannot resolve"):
        pair("x", "no-such-host.invalid", 10000, timeout=5)


@pytest.mark.parametrize("name", ["", "n" * 101, "with\0nul"])
def test_invalid_names_are_refused_before_any_io(name: str) -> None:
    with pytest.raises(InvalidName) as caught:
        pair(name, "127.0.0.1", 9, timeout=1)
    assert isinstance(caught.value, ValueError)


def test_dropped_by_the_server_is_peer_gone(start_server) -> None:
    server = start_server(waiter_ttl=0.3)
    with pytest.raises(PeerGone):
        pair("ttl", "127.0.0.1", server.port, timeout=5)


@pytest.mark.integration
def test_garbled_reply_is_a_protocol_error() -> None:
    broken = ReferenceStandIn(reply=lambda address: b"\0\0\0\0\0\0\0\0")
    try:
        with pytest.raises(ProtocolError, match="unusable address"):
            pair("garbled", "127.0.0.1", broken.port, timeout=2)
    finally:
        broken.close()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMIC_PAIR_TIMEOUT", "7.5")
    assert ClientSettings.from_env().timeout == 7.5


def test_blocking_pair_refuses_to_run_inside_an_event_loop(server: ServerProcess) -> None:
    async def misuse() -> None:
        pair("loop", "127.0.0.1", server.port, timeout=1)

    with pytest.raises(RuntimeError, match="pair_async"):
        asyncio.run(misuse())


def test_pair_async(server: ServerProcess) -> None:
    async def both() -> None:
        a, b = await asyncio.gather(pair_async("aio", "127.0.0.1", server.port, timeout=5),
                                    pair_async("aio", "127.0.0.1", server.port, timeout=5))
        with a, b:
            reader, writer = await asyncio.open_connection(sock=a)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(b, b"async")
            assert await reader.readexactly(5) == b"async"
            writer.close()
            await writer.wait_closed()

    asyncio.run(both())
