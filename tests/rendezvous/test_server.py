"""The server against raw-protocol clients: wire bytes, and every way the reference server breaks.

Each robustness test names the reference failure (shared/PROTOCOL.md) it guards against. Every
test that starts a server runs twice, on the C hub and on the pure-Python one (the ``hub``
fixture below); the C run skips, saying why, where the C hub is not built.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import time

import pytest

from services.rendezvous.protocol import encode_address
from services.rendezvous.server import per_source_cap
from tests.rendezvous.conftest import (
    ServerProcess,
    closed_without_reply,
    hub_param,
    log_events,
    raw_client,
    read_message,
    silent_for,
    track,
)


@pytest.fixture(params=["c", "python"])
def hub(request: pytest.FixtureRequest) -> str:
    """Every server of these tests runs each hub in turn."""
    return hub_param(request)


def own_address(sock: socket.socket) -> tuple[str, int]:
    return sock.getsockname()[:2]


def assert_paired(a: socket.socket, b: socket.socket) -> None:
    """Both got message 2 naming the other, then the server closed both."""
    assert read_message(a) == own_address(b)
    assert read_message(b) == own_address(a)
    assert a.recv(1) == b"" and b.recv(1) == b""


def test_wire_bytes_match_the_reference(server: ServerProcess) -> None:
    a = raw_client(server, b"job-1")
    raw_1 = a.recv(8, socket.MSG_WAITALL)
    assert raw_1 == encode_address(*own_address(a))
    assert raw_1[6:] == b"\0\0" and struct.unpack("!H", raw_1[4:6])[0] == own_address(a)[1]
    b = raw_client(server, b"job-1")
    assert b.recv(8, socket.MSG_WAITALL) == encode_address(*own_address(b))
    assert b.recv(8, socket.MSG_WAITALL) == raw_1
    assert a.recv(8, socket.MSG_WAITALL) == encode_address(*own_address(b))
    assert a.recv(1) == b"" and b.recv(1) == b""


def test_pairs_in_twos_in_arrival_order(server: ServerProcess) -> None:
    clients = []
    for _ in range(4):
        clients.append(raw_client(server, b"same"))
        read_message(clients[-1])
    assert_paired(clients[0], clients[1])
    assert_paired(clients[2], clients[3])
    third_alone = raw_client(server, b"same")
    read_message(third_alone)
    assert silent_for(third_alone, 0.3), "a lone client must wait, not be paired"


def test_bare_connections_cost_nothing(server: ServerProcess) -> None:
    """Reference failure 1: two connections that close without a name kill tcpunchd (SIGPIPE)."""
    for index in range(300):
        probe = track(socket.create_connection((server.host, server.port)))
        if index % 3 == 0:  # some leave with a reset instead of a FIN
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        probe.close()
    a, b = raw_client(server, b"after-probes"), raw_client(server, b"after-probes")
    read_message(a), read_message(b)
    assert_paired(a, b)
    server.wait_metric("rendezvous_open_connections", 0)
    assert server.metrics()["rendezvous_pairings_total"] == 1


def test_silent_client_blocks_nobody_and_is_dropped(server: ServerProcess) -> None:
    """Reference failure 3: one silent client blocks every other (blocking recv)."""
    silent = raw_client(server)
    started = time.monotonic()
    a, b = raw_client(server, b"busy"), raw_client(server, b"busy")
    read_message(a), read_message(b)
    assert_paired(a, b)
    assert time.monotonic() - started < 0.3
    assert closed_without_reply(silent, within=2.0), "silent client must be dropped after the name timeout"
    assert server.metrics()['rendezvous_timeouts_total{kind="name"}'] == 1


def test_departed_waiter_is_never_paired(server: ServerProcess) -> None:
    """Reference failure 4: dead waiters stay, and a later client is paired with a closed socket."""
    gone = raw_client(server, b"job-x")
    read_message(gone)
    gone.close()
    server.wait_metric("rendezvous_waiters", 0)
    b = raw_client(server, b"job-x")
    read_message(b)
    assert silent_for(b, 0.3), "must wait for a live partner"
    c = raw_client(server, b"job-x")
    read_message(c)
    assert_paired(b, c)
    assert server.metrics()["rendezvous_waiters_gone_total"] == 1


def test_unjoined_waiter_is_dropped_after_ttl(start_server) -> None:
    server = start_server(waiter_ttl=0.5)
    lonely = raw_client(server, b"nobody-comes")
    read_message(lonely)
    started = time.monotonic()
    assert closed_without_reply(lonely, within=3.0), "no false peer address, just a close"
    assert 0.3 < time.monotonic() - started < 2.0
    assert server.metrics()['rendezvous_timeouts_total{kind="waiter_ttl"}'] == 1
    assert server.metrics()["rendezvous_waiters"] == 0


def test_out_of_descriptors_refuses_and_recovers(start_server) -> None:
    """Reference failure 2: running out of fds kills tcpunchd (uncaught accept error)."""
    server = start_server(nofile=128, log_format="json")
    cap = int(server.metrics()["rendezvous_connection_cap"])
    assert cap == 128 - 32
    clients, refused = [], 0
    for index in range(cap + 40):
        sock = raw_client(server, f"hold-{index}".encode())
        sock.settimeout(3)
        try:
            accepted = bool(sock.recv(8, socket.MSG_WAITALL))
        except ConnectionResetError:  # refused while our name sat unread in its buffer
            accepted = False
        if accepted:
            clients.append(sock)
        else:
            refused += 1
            sock.close()
    assert len(clients) == cap and refused == 40
    assert server.get("/healthz")[0] == 200, "health port must answer while pairing is saturated"
    assert server.metrics()['rendezvous_rejections_total{reason="server_full"}'] == 40
    assert any(e["event"] == "connection_rejected" and e.get("reason") == "server_full" for e in log_events(server))
    for sock in clients:
        sock.close()
    server.wait_metric("rendezvous_open_connections", 0)
    a, b = raw_client(server, b"recovered"), raw_client(server, b"recovered")
    read_message(a), read_message(b)
    assert_paired(a, b)


def test_ten_thousand_waiters_stay_within_bounded_memory(start_server) -> None:
    # every waiter comes from 127.0.0.1: let that one source hold the whole budget (a single-tenant server)
    server = start_server(log_level="WARNING", per_source_share=1.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 11_000:
        pytest.skip(f"needs 11,000 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 11_000), hard))

    def rss_kib() -> int:
        with open(f"/proc/{server.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    idle = rss_kib()
    clients = []
    try:
        for index in range(10_000):
            sock = socket.create_connection((server.host, server.port))
            sock.sendall(b"w%d" % index)
            clients.append(sock)
        server.wait_metric("rendezvous_waiters", 10_000, timeout=30)
        loaded = rss_kib()
    finally:
        for sock in clients:
            sock.close()
    server.wait_metric("rendezvous_waiters", 0, timeout=30)
    per_waiter = (loaded - idle) * 1024 / 10_000
    print(f"RSS idle {idle / 1024:.1f} MiB, with 10,000 waiters {loaded / 1024:.1f} MiB ({per_waiter:.0f} B/waiter)")
    assert loaded - idle < 64 * 1024, "10,000 waiters must cost well under 64 MiB"


@pytest.mark.parametrize(
    ("first_read", "paired_name", "rejection"),
    [
        (b"", None, None),  # covered by the bare-connection test: no read at all
        (b"\0", None, "empty_name"),
        (b"\0\0\0trailing", None, "empty_name"),
        (b"n" * 100, b"n" * 100, None),
        (b"n" * 100 + b"\0" * 20, b"n" * 100, None),
        (b"n" * 101, None, "name_too_long"),
        (b"n" * 150, None, "name_too_long"),
        (b"abc\0padding", b"abc", None),
        (bytes(range(1, 256))[:100], bytes(range(1, 101)), None),
    ],
    ids=["none", "nul", "nul-first", "exactly-100", "100-then-nul", "101", "150", "nul-inside", "binary"],
)
def test_name_rules(server: ServerProcess, first_read: bytes, paired_name: bytes | None,
                    rejection: str | None) -> None:
    if not first_read:
        return
    client = raw_client(server, first_read)
    if rejection:
        assert closed_without_reply(client)
        assert server.metrics()[f'rendezvous_rejections_total{{reason="{rejection}"}}'] == 1
        return
    read_message(client)
    partner = raw_client(server, paired_name)
    read_message(partner)
    assert_paired(client, partner)


def test_bytes_after_the_name_drop_the_waiter(server: ServerProcess) -> None:
    client = raw_client(server, b"chatty")
    read_message(client)
    client.sendall(b"more")
    assert closed_without_reply(client)
    assert server.metrics()['rendezvous_rejections_total{reason="unexpected_data"}'] == 1
    assert server.metrics()["rendezvous_waiters"] == 0


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_resets_mid_reply_cost_only_that_pairing(server: ServerProcess) -> None:
    """A peer that resets while the server writes to it (EPIPE/ECONNRESET) must not hurt others."""
    for index in range(200):
        name = b"flaky-%d" % index
        waiter = raw_client(server, name)
        joiner = raw_client(server, name)
        _reset(joiner if index % 2 else waiter)  # one side vanishes as the replies are written
        (waiter if index % 2 else joiner).close()
    a, b = raw_client(server, b"steady"), raw_client(server, b"steady")
    read_message(a), read_message(b)
    assert_paired(a, b)
    assert server.process.poll() is None
    server.wait_metric("rendezvous_open_connections", 0)


def test_sigterm_closes_everyone_without_a_false_reply(start_server) -> None:
    server = start_server()
    waiters = [raw_client(server, b"w%d" % index) for index in range(20)]
    for waiter in waiters:
        read_message(waiter)
    silent = raw_client(server)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=10) == 0
    for sock in waiters:
        assert closed_without_reply(sock), "only a close, never a peer address"
    # The kernel held the silent one until its first bytes (defer_accept): they meet a reset.
    silent.sendall(b"late\0")
    assert closed_without_reply(silent), "only a reset, never a peer address"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=2)


def test_per_source_cap(start_server) -> None:
    server = start_server(max_per_source=5, log_format="json")
    held = [raw_client(server, b"s%d" % index) for index in range(5)]
    for sock in held:
        read_message(sock)
    extra = raw_client(server, b"one-too-many")
    assert closed_without_reply(extra)
    assert server.metrics()['rendezvous_rejections_total{reason="source_limit"}'] == 1
    assert any(e.get("reason") == "source_limit" and e.get("cap") == 5 for e in log_events(server))
    held.pop().close()
    server.wait_metric("rendezvous_open_connections", 4)
    again = raw_client(server, b"fits-again")
    read_message(again)


def test_overall_cap(start_server) -> None:
    server = start_server(max_connections=3)
    held = [raw_client(server, b"c%d" % index) for index in range(3)]
    for sock in held:
        read_message(sock)
    assert closed_without_reply(raw_client(server, b"c3"))
    assert server.metrics()['rendezvous_rejections_total{reason="server_full"}'] == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_dual_stack_reports_mapped_addresses_as_ipv4(start_server) -> None:
    server = start_server(host="::")
    a = raw_client(server, b"v4")
    assert read_message(a) == own_address(a)  # '::ffff:127.0.0.1' on the server, 127.0.0.1 on the wire
    native = track(socket.create_connection(("::1", server.port), timeout=5))
    native.sendall(b"v6")
    assert closed_without_reply(native)
    assert server.metrics()['rendezvous_rejections_total{reason="no_ipv4_address"}'] == 1


def test_health_port(server: ServerProcess, hub: str) -> None:
    status, body = server.get("/healthz")
    assert status == 200 and '"ok"' in body
    status, body = server.get("/metrics")
    assert status == 200
    assert "# TYPE rendezvous_pairings_total counter" in body
    assert "# TYPE rendezvous_waiters gauge" in body
    assert f'rendezvous_hub_info{{hub="{hub}"}} 1' in body.splitlines(), "/metrics says which hub serves"
    assert server.get("/nope")[0] == 404
    with socket.create_connection(("127.0.0.1", server.health_port), timeout=5) as raw:
        raw.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 405")
    with socket.create_connection(("127.0.0.1", server.health_port), timeout=5) as raw:
        raw.sendall(b"garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    assert server.metrics()["rendezvous_connections_total"] == 0, "probes never touch the pairing port"


def test_json_logs_one_event_per_line(start_server, hub: str) -> None:
    server = start_server(log_format="json", name_timeout=0.3)
    silent = raw_client(server)
    assert closed_without_reply(silent)
    server.stop()
    events = log_events(server)
    assert [e["event"] for e in events][:1] == ["listening"]
    assert events[0]["hub"] == hub, "the server logs which hub serves"
    assert {"connection_timed_out", "signal_received", "stopped"} <= {e["event"] for e in events}
    assert all(line.startswith("{") for line in server.log.splitlines())


def test_settings_come_from_the_environment(start_server) -> None:
    server = start_server(env={"COSMIC_RENDEZVOUS_WAITER_TTL": "0.4"})
    lonely = raw_client(server, b"env")
    read_message(lonely)
    assert closed_without_reply(lonely, within=2.0)


@pytest.mark.integration
def test_bad_setting_is_a_clear_error() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "services.rendezvous"], capture_output=True, text=True,
                            env={**os.environ, "COSMIC_RENDEZVOUS_PORT": "ten"}, timeout=30)
    assert result.returncode == 2
    assert "COSMIC_RENDEZVOUS_PORT='ten'" in result.stderr


def test_one_source_cannot_take_more_than_its_share_of_the_budget(start_server) -> None:
    """With the hard descriptor limit at 2,048 (budget 2,016), one source used to be capped at
    10,000 only, so it could hold every connection and refuse service to all others. Now it gets
    half the budget, the other sources the rest: 127.0.0.2 is served while 127.0.0.1 is at its cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2_400:
        pytest.skip(f"needs 2,400 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2_400), hard))
    server = start_server(nofile=2048, log_level="WARNING")
    budget = int(server.metrics()["rendezvous_connection_cap"])
    assert budget == 2048 - 32
    held, refused = [], 0
    for index in range(budget // 2 + 50):
        sock = raw_client(server, b"greedy-%d" % index)
        sock.settimeout(3)
        try:
            accepted = bool(sock.recv(8, socket.MSG_WAITALL))
        except ConnectionResetError:
            accepted = False
        if accepted:
            held.append(sock)
        else:
            refused += 1
            sock.close()
    assert len(held) == budget // 2, "one source may hold half the budget, no more"
    assert refused == 50
    assert server.metrics()['rendezvous_rejections_total{reason="source_limit"}'] == 50
    other = track(socket.create_connection((server.host, server.port), timeout=5, source_address=("127.0.0.2", 0)))
    other.sendall(b"someone-else")
    assert read_message(other) == other.getsockname()[:2], "another source is still served"


def test_per_source_cap_is_a_share_of_the_budget_with_a_floor() -> None:
    assert per_source_cap(2016, 0.5, 256, 10_000) == 1008  # hard limit 2,048: half the budget
    assert per_source_cap(400, 0.5, 256, 10_000) == 256  # small budget: the floor, so a job still pairs
    assert per_source_cap(96, 0.5, 256, 10_000) == 96  # never above the budget itself
    assert per_source_cap(1_000_000, 0.5, 256, 10_000) == 10_000  # max_per_source bounds it
    assert per_source_cap(19_968, 1.0, 256, 10_000) == 10_000
