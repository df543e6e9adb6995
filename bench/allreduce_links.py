"""The links and pairings one allreduce of a 1,000-rank job makes, and the rendezvous time they cost.

Links open lazily, the first time two ranks talk, so each algorithm of
:mod:`services.rendezvous.collectives` makes its own set. Two steps:

1. **Count**: every rank of the job runs the real algorithm against a recording stand-in of the
   communicator (no sockets): each ``_exchange`` notes which of its peers have no link yet, which
   is exactly what ``Communicator._ensure_links`` would pair. Both algorithms: recursive
   doubling (values under ``RING_MIN_BYTES``) and the ring (arrays at least that large).
2. **Replay**: those pairings, grouped by the exchange at which the later of the two ranks opens
   them (ranks move through the steps together), against our server and against the C baseline
   of tcpunchd's design (``bench/tcpunch_baseline.c``), in the same run: raw-protocol clients in
   this process, ``--window`` pairings in flight at most, every reply checked. Reported: wall time
   of each replay (this Python client costs more than either server, so read it as an upper
   bound) and the server's CPU time (from /proc/PID/stat) for all the pairings, per pairing and as
   a ratio to the baseline's.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/allreduce_links.py [--ranks 1000]
[--window 128] [--rounds 3]``. Results: stdout and ``bench/out/allreduce_links.json``.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import time
from collections import defaultdict
from typing import Any

import numpy
from _harness import HOST, OUT, Server, children_killed_on_exit, start_ours, write_report
from rendezvous_server import BASELINE, build, cpu_seconds, start_printing

from services.rendezvous import collectives
from services.rendezvous.comm import link_name

GROUP_TIMEOUT = 30.0  # one group of pairings, whatever the server does


class Recorder:
    """What ``collectives`` needs of a Communicator; records when each link would be opened."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.links: set[int] = set()
        self.opened: list[tuple[int, int]] = []  # (exchange index, peer)
        self.exchanges = 0

    def _exchange(self, op: Any, sends: dict[int, Any], receives: list[int], deadline: float,
                  into: dict[int, Any] | None = None) -> dict[int, Any]:
        for peer in sorted({*sends, *receives} - self.links - {self.rank}):
            self.links.add(peer)
            self.opened.append((self.exchanges, peer))
        self.exchanges += 1
        return {peer: (into or {}).get(peer, 0) for peer in receives}


def count(ranks: int, value: Any) -> dict[str, Any]:
    """Run allreduce on every rank against a Recorder; the pairings, each with its group."""
    recorders = [Recorder(rank, ranks) for rank in range(ranks)]
    for recorder in recorders:
        collectives.allreduce(recorder, value, "sum", float("inf"))  # type: ignore[arg-type]
    opened_at = {(r.rank, peer): index for r in recorders for index, peer in r.opened}
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (rank, peer), index in opened_at.items():
        if rank < peer:
            assert (peer, rank) in opened_at, f"link {rank}-{peer} opened by one side only"
            groups[max(index, opened_at[(peer, rank)])].append((rank, peer))
    links = [len(r.links) for r in recorders]
    return {"pairings": sum(len(g) for g in groups.values()), "groups": [groups[k] for k in sorted(groups)],
            "links_per_rank": {"min": min(links), "median": statistics.median(links), "max": max(links)},
            "exchanges_per_rank": max(r.exchanges for r in recorders)}


def replay(port: int, groups: list[list[tuple[int, int]]], window: int, comm_name: str) -> float:
    """Pair every link through the server at ``port``, group after group; returns the wall time."""
    started = time.monotonic()
    for group in groups:
        for offset in range(0, len(group), window):
            pair_batch(port, [link_name(comm_name, a, b).encode() for a, b in group[offset:offset + window]])
    return time.monotonic() - started


def pair_batch(port: int, names: list[bytes]) -> None:
    """Both ends of every name at once; each must read 16 bytes (its address, then its peer's) and EOF."""
    replies: dict[socket.socket, bytearray] = {}
    with selectors.DefaultSelector() as selector:
        try:
            for name in names:
                for _ in range(2):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    sock.connect_ex((HOST, port))
                    replies[sock] = bytearray()
                    selector.register(sock, selectors.EVENT_WRITE, name)
            open_ = len(replies)
            deadline = time.monotonic() + GROUP_TIMEOUT
            while open_:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{open_} connections unanswered after {GROUP_TIMEOUT} s")
                for key, _ in selector.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.events == selectors.EVENT_WRITE:
                        sock.send(key.data)
                        selector.modify(sock, selectors.EVENT_READ)
                        continue
                    chunk = sock.recv(64)
                    replies[sock] += chunk
                    if not chunk:
                        selector.unregister(sock)
                        open_ -= 1
            paired = {bytes(reply[:8]): bytes(reply[8:]) for reply in replies.values()}
            for sock, reply in replies.items():
                local = socket.inet_aton(HOST) + sock.getsockname()[1].to_bytes(2, "big") + b"\0\0"
                assert len(reply) == 16 and reply[:8] == local and paired[bytes(reply[8:])] == local, \
                    f"bad reply {bytes(reply)!r}"
        finally:
            for sock in replies:
                sock.close()


def measure(server: Server, groups: list[list[tuple[int, int]]], window: int, label: str) -> dict[str, float]:
    """One replay against ``server``: wall time and the server's CPU time."""
    cpu = cpu_seconds(server.child.pid)
    wall = replay(server.port, groups, window, f"{label}-{time.monotonic_ns()}")
    return {"wall_s": wall, "cpu_s": cpu_seconds(server.child.pid) - cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ranks", type=int, default=1000)
    parser.add_argument("--window", type=int, default=128, help="pairings in flight at most (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="replays per server, interleaved (default 3)")
    args = parser.parse_args(argv)
    if not 2 <= args.ranks <= 4096 or not 1 <= args.window <= 1000 or not 1 <= args.rounds <= 20:
        parser.error("ranks 2..4096, window 1..1000, rounds 1..20")
    OUT.mkdir(parents=True, exist_ok=True)
    small = numpy.ones(4, dtype=numpy.float32)
    large = numpy.ones(max(collectives.RING_MIN_BYTES // 4, args.ranks), dtype=numpy.float32)
    algorithms = {"recursive doubling (< 256 KiB)": count(args.ranks, small),
                  "ring (>= 256 KiB)": count(args.ranks, large)}
    print(f"{args.ranks} ranks; load average {os.getloadavg()[0]:.2f}")
    report: dict[str, Any] = {"ranks": args.ranks, "window": args.window, "rounds": args.rounds, "algorithms": {}}
    with children_killed_on_exit():
        servers = {"ours/uvloop": start_ours("uvloop", "ours/uvloop-links", "--waiter-ttl", "60"),
                   BASELINE: start_printing([str(build("tcpunch_baseline.c", "tcpunch_baseline")), HOST, "0"],
                                            BASELINE)}
        for algorithm, counted in algorithms.items():
            groups = counted["groups"]
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
            for index in range(args.rounds):
                for label in (list(servers) if index % 2 == 0 else list(servers)[::-1]):
                    runs[label].append(measure(servers[label], groups, args.window, label))
            pairings = counted["pairings"]
            base_cpu = statistics.median(r["cpu_s"] for r in runs[BASELINE])
            print(f"\n{algorithm}: {pairings:,} pairings in {len(groups)} groups; links per rank "
                  f"{counted['links_per_rank']}; exchanges per rank {counted['exchanges_per_rank']}")
            summary = {}
            for label, samples in runs.items():
                wall = statistics.median(r["wall_s"] for r in samples)
                cpu = statistics.median(r["cpu_s"] for r in samples)
                summary[label] = {"wall_s": wall, "cpu_s": cpu, "cpu_us_per_pairing": 1e6 * cpu / pairings,
                                  "cpu_ratio": cpu / base_cpu if base_cpu else None, "samples": samples}
                print(f"  {label:<18} replay wall {wall * 1e3:8.1f} ms (median of {len(samples)}); server CPU "
                      f"{cpu * 1e3:7.1f} ms = {1e6 * cpu / pairings:5.0f} us/pairing"
                      + (f" ({cpu / base_cpu:.2f}x the baseline's)" if base_cpu else ""))
            report["algorithms"][algorithm] = {k: v for k, v in counted.items() if k != "groups"} | {
                "group_sizes": [len(g) for g in groups], "servers": summary}
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    write_report("allreduce_links", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
