"""Resident memory of the rendezvous server holding many waiters, and their release.

Our server (uvloop) holds ``--waiters`` waiters at once (distinct names, all from 127.0.0.1), to
measure resident memory per waiter and check that every waiter is forgotten when its client goes.
Run by ``bench/rendezvous_server.py`` after the throughput rounds, or alone:
``.venv/bin/python bench/rendezvous_memory.py [--waiters 10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import socket
import time
from pathlib import Path

from _harness import HOST, OUT, Server, children_killed_on_exit, http_get, start_ours, write_report


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, "no VmRSS"
    return int(match.group(1))


def scrape(server: Server) -> dict[str, float]:
    """Our server's /metrics as ``{name{labels}: value}``."""
    assert server.health_port is not None
    samples: dict[str, float] = {}
    for line in http_get(server.health_port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def raise_fd_limit(needed: int) -> int:
    """Raise our soft descriptor limit to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        print(f"  warning: descriptor limit {soft} < {needed}", flush=True)
    return soft


def wait_for_gauge(server: Server, name: str, value: float, timeout: float) -> tuple[bool, float]:
    """Poll /metrics until ``name`` equals ``value``; returns (reached, seconds waited)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if scrape(server).get(name) == value:
            return True, time.monotonic() - start
        time.sleep(0.05)
    return False, time.monotonic() - start


def open_waiters(port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """``count`` clients, each named distinctly, each having read its message 1; returns (sockets, bad replies).

    Blocking sockets with a timeout keep this a plain loop; loopback connects take microseconds,
    and the overall deadline bounds it whatever the server does.
    """
    clients: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"opened only {i} of {count} waiters in {timeout:g} s")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(sock)
            sock.settimeout(5.0)
            sock.connect((HOST, port))
            sock.sendall(f"rss-{i}".encode())
        bad = 0
        for sock in clients:
            reply = sock.recv(8, socket.MSG_WAITALL)
            bad += reply[4:6] != sock.getsockname()[1].to_bytes(2, "big")
        return clients, bad
    except BaseException:
        close_with_reset(clients)
        raise


def close_with_reset(clients: list[socket.socket]) -> None:
    """Close with an RST (SO_LINGER 0).

    A FIN would leave thousands of TIME_WAIT entries on client ports, which is what makes
    connect-first clients fail to bind (PROTOCOL.md), and this machine is shared with tests.
    """
    for sock in clients:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


def memory(waiters: int) -> dict[str, object]:
    """RSS of our server (uvloop) idle and holding ``waiters`` waiters; the gauge must return to 0."""
    raise_fd_limit(waiters + 256)
    # Every client comes from 127.0.0.1, so let that one source hold the whole budget.
    server = start_ours("uvloop", "ours/uvloop-rss", "--max-per-source", str(waiters * 2), "--per-source-share", "1")
    clients: list[socket.socket] = []
    try:
        time.sleep(0.5)
        idle = rss_kib(server.child.pid)
        started = time.monotonic()
        clients, bad = open_waiters(server.port, waiters, timeout=90.0)
        opened_s = time.monotonic() - started
        reached, _ = wait_for_gauge(server, "rendezvous_waiters", waiters, timeout=30.0)
        loaded = rss_kib(server.child.pid)
        gauge_full = scrape(server).get("rendezvous_waiters")
        close_with_reset(clients)
        clients = []
        emptied, drain_s = wait_for_gauge(server, "rendezvous_waiters", 0, timeout=30.0)
        final = scrape(server)
        after = rss_kib(server.child.pid)
    finally:
        close_with_reset(clients)
        server.child.stop()
    return {"waiters": waiters, "gauge_reached": reached, "gauge_at_full": gauge_full, "bad_replies": bad,
            "open_s": round(opened_s, 2), "idle_rss_kib": idle, "loaded_rss_kib": loaded,
            "rss_per_waiter_bytes": round((loaded - idle) * 1024 / waiters),
            "gauge_back_to_zero": emptied, "drain_s": round(drain_s, 2),
            "open_connections_after": final.get("rendezvous_open_connections"),
            "waiters_gone_total": final.get("rendezvous_waiters_gone_total"), "rss_after_close_kib": after}


def print_memory(mem: dict[str, object]) -> None:
    print(f"\nMemory: ours/uvloop holding {mem['waiters']:,} waiters (distinct names, all from {HOST})")
    print(f"  opened in {mem['open_s']} s; gauge reached {mem['waiters']}: {mem['gauge_reached']}; "
          f"bad message-1 replies: {mem['bad_replies']}")
    print(f"  VmRSS idle {mem['idle_rss_kib']:,} KiB -> loaded {mem['loaded_rss_kib']:,} KiB: "
          f"{mem['rss_per_waiter_bytes']:,} bytes per waiter (user space only; kernel socket memory not included)")
    print(f"  after closing them all (RST): waiters gauge back to 0: {mem['gauge_back_to_zero']} "
          f"in {mem['drain_s']} s; open connections {mem['open_connections_after']}; "
          f"waiters_gone_total {mem['waiters_gone_total']}; VmRSS {mem['rss_after_close_kib']:,} KiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--waiters", type=int, default=10_000, help="waiters held at once (default 10000)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with children_killed_on_exit():
        mem = memory(args.waiters)
    print_memory(mem)
    write_report("rendezvous_memory", mem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
