"""Throughput and memory of the rendezvous server, against a plain asyncio-streams baseline.

Why this shape: the server is one event loop, so its throughput is pairings per second of one
core; measuring it needs a client that costs far less than the server (``loadgen.c``, compiled
here into ``bench/out/``) and a baseline measured in the same run on the same (noisy) machine,
so that the result is a ratio that survives the machine changing under us.

Variants, each a separate process on free loopback ports:

a. our server (``python -m services.rendezvous``) on uvloop
b. our server on asyncio's own loop
c. ``bench/streams_baseline.py`` on asyncio: the ratio column divides by this one
d. the same baseline on uvloop

Each runs loadgen with 1, then 2 load threads for ``--seconds``. Then our server (uvloop)
holds 10,000 waiters at once, to measure resident memory per waiter and check that every
waiter is forgotten when its client goes. Results: a table on stdout and
``bench/out/rendezvous_server.json``.

Run: ``.venv/bin/python bench/rendezvous_server.py [--seconds 5] [--concurrency 64] [--waiters 10000]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import (
    BENCH,
    HOST,
    OUT,
    REPO,
    STARTUP_TIMEOUT,
    Server,
    children_killed_on_exit,
    http_get,
    spawn,
    start_ours,
    write_report,
)


def start_baseline(uvloop: bool, label: str) -> Server:
    """The streams baseline on a port it picks; ready once it prints ``listening HOST PORT``."""
    cmd = [sys.executable, str(BENCH / "streams_baseline.py"), "--host", HOST, "--port", "0"]
    if uvloop:
        cmd.append("--uvloop")
    log = OUT / f"{label.replace('/', '-')}.stderr.log"
    child = spawn(cmd, log, stdout=subprocess.PIPE)
    stdout = child.process.stdout
    assert stdout is not None
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not line.endswith(b"\n") and time.monotonic() < deadline and child.running():
            if selector.select(timeout=0.1):
                chunk = os.read(stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
    match = re.match(rb"listening \S+ (\d+)", line)
    if not match:
        child.stop()
        raise RuntimeError(f"{label}: baseline did not start (said {line!r}); see {log}")
    return Server(label, child, int(match.group(1)), None, log)


# -- measurements ----------------------------------------------------------------------------
def build_loadgen() -> Path:
    """Compile loadgen.c into bench/out/ unless the binary is newer than the source."""
    source, binary = BENCH / "loadgen.c", OUT / "loadgen"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(binary), str(source)],
                       check=True, timeout=120)
    return binary


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def run_loadgen(binary: Path, port: int, seconds: float, threads: int, concurrency: int) -> dict[str, Any]:
    """One loadgen run; its last stdout line is its JSON result."""
    done = subprocess.run([str(binary), HOST, str(port), str(seconds), str(threads), str(concurrency)],
                          capture_output=True, timeout=seconds + 60, check=False)
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return json.loads(lines[-1])


@dataclass
class Row:
    """One line of the throughput table."""

    variant: str
    threads: int
    pairings: int
    pairings_per_s: float
    errors: int
    error_kinds: dict[str, int]
    elapsed_s: float
    server_cpu_pct: float
    server_pairings: int | None = None
    ratio: float | None = None


def measure(server: Server, binary: Path, seconds: float, concurrency: int) -> list[Row]:
    """Load ``server`` with 1 then 2 loadgen threads; check our server's own count when it has one."""
    rows = []
    for threads in (1, 2):
        before = scrape(server)["rendezvous_pairings_total"] if server.health_port else None
        cpu = cpu_seconds(server.child.pid)
        result = run_loadgen(binary, server.port, seconds, threads, concurrency)
        cpu = cpu_seconds(server.child.pid) - cpu
        after = scrape(server)["rendezvous_pairings_total"] if server.health_port else None
        kinds = {k: v for k, v in result["error_kinds"].items() if v}
        rows.append(Row(server.label, threads, int(result["pairings"]), float(result["pairings_per_s"]),
                        int(result["errors"]), kinds, float(result["elapsed_s"]),
                        100.0 * cpu / float(result["elapsed_s"]),
                        None if before is None or after is None else int(after - before)))
        print(f"  {server.label:<18} threads={threads}  {rows[-1].pairings_per_s:>9,.0f} pairings/s  "
              f"errors={rows[-1].errors}  server CPU {rows[-1].server_cpu_pct:.0f}%", flush=True)
        time.sleep(0.5)  # let the last connections of the run drain
    return rows


VARIANTS = (
    ("ours/uvloop", lambda: start_ours("uvloop", "ours/uvloop")),
    ("ours/asyncio", lambda: start_ours("asyncio", "ours/asyncio")),
    ("baseline/asyncio", lambda: start_baseline(False, "baseline/asyncio")),
    ("baseline/uvloop", lambda: start_baseline(True, "baseline/uvloop")),
)
BASELINE = "baseline/asyncio"


def throughput(binary: Path, seconds: float, concurrency: int) -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Every variant in turn, one at a time so that they never compete for the two cores."""
    rows: list[Row] = []
    servers: dict[str, dict[str, Any]] = {}
    for label, start in VARIANTS:
        server = start()
        try:
            rows += measure(server, binary, seconds, concurrency)
        finally:
            code = server.child.stop()
        servers[label] = {"exit_code": code, **summarize_log(server.log)}
    base = {row.threads: row.pairings_per_s for row in rows if row.variant == BASELINE}
    for row in rows:
        row.ratio = row.pairings_per_s / base[row.threads] if base.get(row.threads) else None
    return rows, servers


_NOISE = ("Traceback", "Unhandled exception", "transport:", " ")
_STAMP = re.compile(r"^\S+Z (\w+ +\S+ )")


def summarize_log(log: Path) -> dict[str, object]:
    """What a server wrote on stderr: line and traceback counts, and its distinct headlines.

    Headlines are log events without timestamp and exception lines, so that a few thousand lines
    of tracebacks read as "ConnectionResetError x70".
    """
    lines = log.read_text(errors="replace").splitlines()
    headlines = Counter(_STAMP.sub(r"\1", line.split(" suppressed_since_last=")[0])
                        for line in lines if line and not line.startswith(_NOISE))
    return {"stderr_lines": len(lines), "tracebacks": sum(line.startswith("Traceback") for line in lines),
            "headlines": dict(headlines.most_common(5)), "stderr_log": str(log.relative_to(REPO))}


# -- memory ----------------------------------------------------------------------------------
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
    # Every client comes from 127.0.0.1, so lift the per-source cap (meant for NATs) above the count.
    server = start_ours("uvloop", "ours/uvloop-rss", "--max-per-source", str(waiters * 2))
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


# -- report ----------------------------------------------------------------------------------
def print_table(rows: list[Row], seconds: float, concurrency: int) -> None:
    print(f"\nThroughput: loadgen {seconds:g} s per row, {concurrency} pairs in flight per load thread, "
          f"ratio against {BASELINE} at the same load threads")
    print(f"{'variant':<18} {'load thr':>8} {'pairings/s':>11} {'pairings':>9} {'errors':>7} "
          f"{'ratio':>6} {'srv CPU':>8} {'srv count':>10}")
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        count = str(row.server_pairings) if row.server_pairings is not None else "-"
        print(f"{row.variant:<18} {row.threads:>8} {row.pairings_per_s:>11,.0f} {row.pairings:>9} "
              f"{row.errors:>7} {ratio:>6} {row.server_cpu_pct:>7.0f}% {count:>10}")
        if row.error_kinds:
            print(f"{'':<18} errors by kind: {row.error_kinds}")


def print_servers(servers: dict[str, dict[str, Any]]) -> None:
    print("\nServer processes (stderr, including the end of each run, when loadgen resets its pairs in flight):")
    for label, info in servers.items():
        print(f"  {label:<18} exit {info['exit_code']}, {info['stderr_lines']} stderr lines, "
              f"{info['tracebacks']} tracebacks ({info['stderr_log']})")
        for headline, count in info["headlines"].items():
            print(f"  {'':<18}   x{count}: {headline[:150]}")


def print_memory(mem: dict[str, object]) -> None:
    print(f"\nMemory: ours/uvloop holding {mem['waiters']:,} waiters (distinct names, all from {HOST})")
    print(f"  opened in {mem['open_s']} s; gauge reached {mem['waiters']}: {mem['gauge_reached']}; "
          f"bad message-1 replies: {mem['bad_replies']}")
    print(f"  VmRSS idle {mem['idle_rss_kib']:,} KiB -> loaded {mem['loaded_rss_kib']:,} KiB: "
          f"{mem['rss_per_waiter_bytes']:,} bytes per waiter (user space only; kernel socket memory not included)")
    print(f"  after closing them all (RST): waiters gauge back to 0: {mem['gauge_back_to_zero']} "
          f"in {mem['drain_s']} s; open connections {mem['open_connections_after']}; "
          f"waiters_gone_total {mem['waiters_gone_total']}; VmRSS {mem['rss_after_close_kib']:,} KiB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="loadgen duration per row (default 5)")
    parser.add_argument("--concurrency", type=int, default=64, help="pairs in flight per load thread (default 64)")
    parser.add_argument("--waiters", type=int, default=10_000, help="waiters held for the memory test")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with children_killed_on_exit():
        binary = build_loadgen()
        print(f"loadgen: {binary.relative_to(REPO)}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}",
              flush=True)
        rows, servers = throughput(binary, args.seconds, args.concurrency)
        print_table(rows, args.seconds, args.concurrency)
        print_servers(servers)
        mem = memory(args.waiters)
        print_memory(mem)
    write_report("rendezvous_server", {"seconds": args.seconds, "concurrency": args.concurrency,
                                       "rows": [asdict(row) for row in rows], "servers": servers, "memory": mem})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
