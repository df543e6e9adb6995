"""Latency of ``services.rendezvous.pair()`` on loopback, against a TCPunch-style client.

What is timed: one pairing plus the first byte each way over the returned link, i.e. how long a
worker waits from asking for a link to having used it. Two processes (sides A and B) pair N
times in sequence under names both know; a barrier starts each round on both sides at once, so
neither side's time includes waiting for a slow partner, and a failed round cannot shift the
next one. Side A's time covers the whole round trip (A sends a byte, B answers one), and that
is the sample reported.

The baseline, measured in the same run against the same server: a client written here the way
PROTOCOL.md describes TCPunch's (connect to the server first, then bind the listener to the same
local port in an accept thread, connect to the peer from that port, sleep 100 ms after a
refused connect). PROTOCOL.md measured it at ~100 ms per pairing; the issue's targets for ours
are p50 < 5 ms and p99 < 20 ms.

Run: ``.venv/bin/python bench/pair_latency.py [--n 500] [--reference-n 500]``. Results: a table
on stdout and ``bench/out/pair_latency.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import multiprocessing as mp
import os
import queue
import select
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from _harness import OUT, children_killed_on_exit, start_ours, write_report

from services.rendezvous import pair

HOST = "127.0.0.1"
ROUND_TIMEOUT = 5.0  # one pairing, client side, either client
BARRIER_TIMEOUT = 30.0  # longest a side waits for its partner to reach the next round
WARMUP = 3  # untimed rounds: imports, first event loop, first thread
TARGET_P50_MS, TARGET_P99_MS = 5.0, 20.0
_MESSAGE = struct.Struct("!4sH2x")

PairFunction = Callable[[bytes, str, int, float], socket.socket]


# -- the reference-style client --------------------------------------------------------------
def _shared_port_socket() -> socket.socket:
    """A TCP socket with SO_REUSEADDR|SO_REUSEPORT, as every socket of the reference client has."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _recv_message(sock: socket.socket) -> tuple[str, int]:
    """One 8-byte server message (the reference reads it with MSG_WAITALL)."""
    data = b""
    while len(data) < _MESSAGE.size:
        chunk = sock.recv(_MESSAGE.size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    packed_ip, port = _MESSAGE.unpack(data)
    return socket.inet_ntoa(packed_ip), port


class _Acceptor(threading.Thread):
    """The reference's ``peer_listen`` thread: bind to the port, listen, take the first connection.

    The reference blocks in accept() forever and leaks the thread when its connect wins; this one
    polls a stop flag so that 500 rounds do not leave 500 threads behind.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.conn: socket.socket | None = None
        self.error: OSError | None = None
        self.established = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with _shared_port_socket() as listener:
                listener.bind(("0.0.0.0", self.port))
                listener.listen(1)
                listener.settimeout(0.01)
                while not self.stopping.is_set():
                    try:
                        self.conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    self.established.set()
                    return
        except OSError as exc:
            self.error = exc  # the reference exits the process here ("Could not bind to local port")

    def finish(self) -> socket.socket | None:
        """Stop accepting; returns the accepted connection, if any."""
        self.stopping.set()
        self.join(1.0)
        return self.conn


def _connect_once(sock: socket.socket, peer: tuple[str, int], deadline: float) -> int:
    """One non-blocking connect attempt, waited for; returns 0 when connected, else the errno.

    The reference spins on EALREADY; waiting on select() for the same outcome only helps it.
    """
    status = sock.connect_ex(peer)
    if status in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
        select.select([], [sock], [], max(0.0, min(deadline - time.monotonic(), 0.25)))
        status = sock.connect_ex(peer)
    if status == errno.EISCONN:
        return 0
    return status


def _link_up(attempt: socket.socket, peer: tuple[str, int], acceptor: _Acceptor, deadline: float) -> bool:
    """The reference's connect loop; True when our connect won, False when the acceptor did."""
    while not acceptor.established.is_set():
        if acceptor.error is not None:
            raise acceptor.error
        if time.monotonic() > deadline:
            raise TimeoutError("no link before the deadline")
        status = _connect_once(attempt, peer, deadline)
        if status == 0:
            return True
        if status not in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
            time.sleep(0.1)  # the reference's fixed pause after a refused connect
    return False


def reference_pair(name: bytes, host: str, port: int, timeout: float) -> socket.socket:
    """TCPunch's ``pair()`` as PROTOCOL.md describes it; returns a blocking socket to the peer."""
    deadline = time.monotonic() + timeout
    rendezvous = _shared_port_socket()
    acceptor: _Acceptor | None = None
    attempt: socket.socket | None = None
    try:
        rendezvous.settimeout(timeout)
        rendezvous.connect((host, port))  # connect first: the kernel picks the local port
        rendezvous.send(name)
        _, public_port = _recv_message(rendezvous)
        acceptor = _Acceptor(public_port)  # then listen on the port the server saw
        acceptor.start()
        peer = _recv_message(rendezvous)
        attempt = _shared_port_socket()
        attempt.setblocking(False)
        attempt.bind(("0.0.0.0", public_port))
        connected = _link_up(attempt, peer, acceptor, deadline)
        accepted, acceptor = acceptor.finish(), None
        if connected:
            if accepted is not None:
                accepted.close()
            link, attempt = attempt, None
        else:
            assert accepted is not None
            link = accepted
        link.setblocking(True)
        return link
    finally:
        if acceptor is not None:  # failed: drop whatever the acceptor may still have taken
            stray = acceptor.finish()
            if stray is not None:
                stray.close()
        if attempt is not None:
            attempt.close()
        rendezvous.close()  # the reference leaks it; the server has closed its end by now


def ours_pair(name: bytes, host: str, port: int, timeout: float) -> socket.socket:
    """``services.rendezvous.pair``, with the same signature as the reference-style client."""
    return pair(name, host, port, timeout)


CLIENTS: dict[str, PairFunction] = {"ours": ours_pair, "reference": reference_pair}


# -- one side of the rounds ------------------------------------------------------------------
def _exchange(link: socket.socket, side: str) -> None:
    """First byte each way: A sends and waits for B's answer."""
    link.settimeout(ROUND_TIMEOUT)
    if side == "a":
        link.sendall(b"a")
        if link.recv(1) != b"b":
            raise ConnectionError("no answer byte from side B")
    else:
        if link.recv(1) != b"a":
            raise ConnectionError("no byte from side A")
        link.sendall(b"b")


def _close_link(link: socket.socket) -> None:
    """Close with an RST: TIME_WAIT left on client ports is what makes connect-first binds fail."""
    with contextlib.suppress(OSError):
        link.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    link.close()


def run_side(side: str, client: str, port: int, rounds: int, prefix: str, barrier: Barrier,
             results: Queue[dict[str, Any]]) -> None:
    """Body of one side's process: WARMUP untimed rounds, then ``rounds`` timed ones."""
    pair_function = CLIENTS[client]
    samples: list[float | None] = []
    errors: Counter[str] = Counter()
    try:
        for i in range(WARMUP + rounds):
            barrier.wait(BARRIER_TIMEOUT)
            name = f"{prefix}-{client}-{i}".encode()
            started = time.perf_counter()
            try:
                link = pair_function(name, HOST, port, ROUND_TIMEOUT)
                try:
                    _exchange(link, side)
                finally:
                    _close_link(link)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                elapsed = None
            else:
                elapsed = time.perf_counter() - started
            if i >= WARMUP:
                samples.append(elapsed)
    except Exception as exc:  # a broken barrier: the partner died or stalled
        errors[f"aborted: {type(exc).__name__}: {exc}"[:120]] += 1
        barrier.abort()
    results.put({"side": side, "samples": samples, "errors": dict(errors)})


def run_client(client: str, port: int, rounds: int) -> dict[str, Any]:
    """Both sides of ``rounds`` rounds with ``client``, as two processes; returns their results."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(2)
    results: Queue[dict[str, Any]] = context.Queue()
    prefix = uuid.uuid4().hex[:12]
    sides = [context.Process(target=run_side, args=(side, client, port, rounds, prefix, barrier, results),
                             daemon=True) for side in ("a", "b")]
    budget = 60.0 + rounds * (ROUND_TIMEOUT if client == "reference" else 1.0)
    collected: dict[str, dict[str, Any]] = {}
    try:
        for process in sides:
            process.start()
        deadline = time.monotonic() + budget
        while len(collected) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                got = results.get(timeout=1.0)
                collected[got["side"]] = got
            if len(collected) < 2 and not any(p.is_alive() for p in sides) and results.empty():
                break
    finally:
        for process in sides:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
    return summarize(client, rounds, collected)


# -- statistics and report -------------------------------------------------------------------
def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


def summarize(client: str, rounds: int, collected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rounds that succeeded on both sides, in ms from side A; every error from both sides."""
    a = collected.get("a", {}).get("samples", [])
    b = collected.get("b", {}).get("samples", [])
    both = [sa for sa, sb in zip(a, b, strict=False) if sa is not None and sb is not None]
    ms = sorted(1000.0 * s for s in both)
    errors: Counter[str] = Counter()
    for side in ("a", "b"):
        if side not in collected:
            errors[f"side {side} returned no result"] += 1
        for message, count in collected.get(side, {}).get("errors", {}).items():
            errors[f"{side}: {message}"] += count
    stats = {f"p{q}_ms": round(percentile(ms, q), 3) for q in (50, 90, 99)} if ms else {}
    if ms:
        stats.update(min_ms=round(ms[0], 3), max_ms=round(ms[-1], 3), mean_ms=round(sum(ms) / len(ms), 3))
    return {"client": client, "rounds": rounds, "ok": len(ms), "failed": rounds - len(ms), **stats,
            "errors": dict(errors), "samples_ms": [round(value, 3) for value in ms]}


def print_report(results: list[dict[str, Any]]) -> None:
    print("\npair() + first byte both ways, loopback, side A's time per round (ms)")
    keys = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
    heads = " ".join(f"{key[:-3]:>8}" for key in keys)
    print(f"{'client':<10} {'rounds':>6} {'ok':>5} {'failed':>6} {heads}")
    for r in results:
        cells = " ".join(f"{r.get(key, float('nan')):>8.2f}" for key in keys)
        print(f"{r['client']:<10} {r['rounds']:>6} {r['ok']:>5} {r['failed']:>6} {cells}")
    by_client = {r["client"]: r for r in results}
    ours, ref = by_client.get("ours", {}), by_client.get("reference", {})
    if "p50_ms" in ours and "p50_ms" in ref:
        ratios = "  ".join(f"{k[:-3]} {ref[k] / ours[k]:.1f}x" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        print(f"\nreference / ours: {ratios}")
    if "p50_ms" in ours:
        p50_ok, p99_ok = ours["p50_ms"] < TARGET_P50_MS, ours["p99_ms"] < TARGET_P99_MS
        print(f"targets for ours: p50 < {TARGET_P50_MS:g} ms: {'met' if p50_ok else 'MISSED'} ({ours['p50_ms']:.2f}); "
              f"p99 < {TARGET_P99_MS:g} ms: {'met' if p99_ok else 'MISSED'} ({ours['p99_ms']:.2f})")
    for r in results:
        for message, count in r["errors"].items():
            print(f"  {r['client']} error x{count}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=500, help="timed rounds with our pair() (default 500)")
    parser.add_argument("--reference-n", type=int, default=None,
                        help="timed rounds with the reference-style client (default: --n)")
    args = parser.parse_args(argv)
    reference_n = args.n if args.reference_n is None else args.reference_n
    OUT.mkdir(parents=True, exist_ok=True)
    with children_killed_on_exit():
        server = start_ours("uvloop", "ours/uvloop-latency")
        try:
            print(f"server: ours/uvloop on {HOST}:{server.port}; {os.cpu_count()} CPUs; "
                  f"Python {sys.version.split()[0]}", flush=True)
            results = []
            for client, rounds in (("ours", args.n), ("reference", reference_n)):
                started = time.monotonic()
                results.append(run_client(client, server.port, rounds))
                print(f"  {client}: {rounds} rounds in {time.monotonic() - started:.1f} s", flush=True)
        finally:
            server.child.stop()
    print_report(results)
    write_report("pair_latency",
                 {"results": results, "targets_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
