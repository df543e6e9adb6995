"""Throughput, CPU per pairing and latency of the rendezvous server, as ratios to a C server of
tcpunchd's design measured in the same run.

Why this shape: the server replaces TCPunch's C++ ``tcpunchd``, so the question is how it does
against a server of that design, and on a shared, noisy machine only a ratio to a baseline
measured in the same run, rounds interleaved, means anything. The load comes from ``loadgen.c``
(it costs far less than any server here); both C programs are compiled by this script with
``cc`` into ``bench/out/`` (never committed).

Variants, each a separate process on a free loopback port, all started first and left idle
while another is loaded:

* ``c/tcpunch-design``: ``bench/tcpunch_baseline.c``; every ratio divides by this one
* ``ours-c/uvloop`` (the default where the C hub is built: ``--hub c``, its own thread),
  ``ours-python/uvloop`` and ``ours-python/asyncio`` (``--hub python``): ``python -m
  services.rendezvous``; ``ours-c-reader/uvloop``: the C hub driven by the event loop's reader
  (``bench/_reader_drive.py``, the design not chosen). The C variants are left out, saying so,
  where the C hub is not built
* ``streams/asyncio``: ``bench/streams_baseline.py``, the plain asyncio-streams version
* ``tcpunchd`` (only with ``--tcpunchd PATH``): a binary built elsewhere from TCPunch's public
  source; restarted for every measurement, since a reset client kills it (SIGPIPE)
* ``LABEL`` (with ``--also LABEL=DIR``, repeatable): our server (uvloop) from another checkout,
  e.g. ``git worktree add /tmp/before <commit>``, to measure what a change bought in one run

Loads: 1 and 4 load threads with ``--concurrency`` pairs in flight each (throughput; latency is
then mostly queueing), and one light load of 1 thread, 1 pair in flight (latency of an idle
server). Each round measures every load on every variant, the variants in a rotated order; the
table gives median (min-max) over the rounds of pairings/s, the ratio to the C baseline of the
same round and load, the server's CPU time per pairing (user + system from /proc/PID/stat), and
the load generator's p50/p99 pairing latency. The load average is printed before and after.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/rendezvous_server.py [--rounds 5]
[--seconds 3] [--concurrency 64] [--waiters 10000] [--tcpunchd /tmp/tcpunch/tcpunchd]
[--skip LABEL]...``.
Results: tables on stdout and ``bench/out/rendezvous_server.json``; then the memory check of
``bench/rendezvous_memory.py`` unless ``--waiters 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
    spawn,
    start_ours,
    write_report,
)

from services.ports import free_port
from services.rendezvous.chub import MISSING, c_available

BASELINE = "c/tcpunch-design"
#: (label, load threads, pairs in flight per thread); None means --concurrency
LOADS: tuple[tuple[str, int, int | None], ...] = (("1 thread", 1, None), ("4 threads", 4, None),
                                                   ("light", 1, 1))


def start_printing(cmd: list[str], label: str) -> Server:
    """A server that prints ``listening HOST PORT`` on stdout once it accepts (``--port 0`` / ``0``)."""
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
        raise RuntimeError(f"{label}: did not start (said {line!r}); see {log}")
    return Server(label, child, int(match.group(1)), None, log)


def start_tcpunchd(binary: Path) -> Server:
    """The real tcpunchd on a free port (it takes the port as its only argument; stdout discarded)."""
    port = free_port()
    child = spawn([str(binary), str(port)], OUT / "tcpunchd.stderr.log")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()  # a bare probe: the first is harmless
            return Server("tcpunchd", child, port, None, OUT / "tcpunchd.stderr.log")
        except OSError:
            time.sleep(0.05)
    child.stop()
    raise RuntimeError("tcpunchd did not start")


def build(source: str, binary: str, *flags: str) -> Path:
    """Compile ``bench/<source>`` into ``bench/out/<binary>`` with cc unless it is newer than the source."""
    src, out = BENCH / source, OUT / binary
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", *flags, "-o", str(out), str(src)], check=True, timeout=120)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loadgen(binary: Path, port: int, seconds: float, threads: int, concurrency: int) -> dict[str, Any]:
    """One loadgen run; its last stdout line is its JSON result."""
    done = subprocess.run([str(binary), HOST, str(port), str(seconds), str(threads), str(concurrency)],
                          capture_output=True, timeout=seconds + 60, check=False)
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return json.loads(lines[-1])


def measure(server: Server, loadgen: Path, seconds: float, threads: int, concurrency: int,
            may_die: bool = False) -> dict[str, Any]:
    """One loadgen run against ``server``, with the server's CPU time over it.

    ``may_die``: tcpunchd dies of SIGPIPE when loadgen resets its pairs in flight at the end; its
    CPU time is still read (an unreaped child's /proc entry stays).
    """
    cpu = cpu_seconds(server.child.pid)
    result = run_loadgen(loadgen, server.port, seconds, threads, concurrency)
    cpu = cpu_seconds(server.child.pid) - cpu
    if not may_die and not server.child.running():
        raise RuntimeError(f"{server.label} died during the run; see {server.log}")
    pairings = int(result["pairings"])
    return {"pairings_per_s": float(result["pairings_per_s"]), "pairings": pairings,
            "errors": int(result["errors"]), "cpu_us_per_pairing": 1e6 * cpu / pairings if pairings else None,
            "cpu_pct": 100.0 * cpu / float(result["elapsed_s"]), "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "error_kinds": {k: v for k, v in result["error_kinds"].items() if v}}


def variants(tcpunchd: Path | None, also: list[str]) -> dict[str, Callable[[], Server]]:
    """How to start each variant; the C baseline first."""
    py = sys.executable
    found: dict[str, Callable[[], Server]] = {
        BASELINE: lambda: start_printing([str(build("tcpunch_baseline.c", "tcpunch_baseline")), HOST, "0"], BASELINE),
        "ours-c/uvloop": lambda: start_ours("uvloop", "ours-c/uvloop", "--hub", "c"),
        "ours-c-reader/uvloop": lambda: start_ours("uvloop", "ours-c-reader/uvloop", "--hub", "c",
                                                   module="bench._reader_drive"),
        "ours-python/uvloop": lambda: start_ours("uvloop", "ours-python/uvloop", "--hub", "python"),
        "ours-python/asyncio": lambda: start_ours("asyncio", "ours-python/asyncio", "--hub", "python"),
        "streams/asyncio": lambda: start_printing(
            [py, str(BENCH / "streams_baseline.py"), "--host", HOST, "--port", "0"], "streams/asyncio"),
    }
    if not c_available():
        print(f"the C hub is not built ({MISSING}): its variants are left out", flush=True)
        del found["ours-c/uvloop"], found["ours-c-reader/uvloop"]
    for item in also:
        if "=" not in item:
            raise SystemExit(f"--also needs LABEL=DIR, got {item!r}")
        label, _, tree = item.partition("=")
        found[label] = lambda label=label, tree=tree: start_ours("uvloop", label, tree=Path(tree).resolve())
    if tcpunchd is not None:
        found["tcpunchd"] = lambda: start_tcpunchd(tcpunchd)
    return found


def rounds(args: argparse.Namespace, loadgen: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every load on every variant, ``args.rounds`` times, the variants' order rotated each round."""
    starters = {label: start for label, start in variants(args.tcpunchd, args.also).items()
                if label not in args.skip or label == BASELINE}
    servers = {label: start() for label, start in starters.items() if label != "tcpunchd"}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {load: {v: [] for v in starters} for load, _, _ in LOADS}
    order = list(starters)
    for index in range(args.rounds):
        for load, threads, concurrency in LOADS:
            for label in order[index % len(order):] + order[:index % len(order)]:
                server = servers[label] if label in servers else starters[label]()
                sample = measure(server, loadgen, args.seconds, threads, concurrency or args.concurrency,
                                 may_die=label not in servers)
                if label not in servers:
                    server.child.stop()
                samples[load][label].append(sample)
                time.sleep(0.3)  # let the last connections of the run drain
            base = samples[load][BASELINE][-1]["pairings_per_s"]
            for label in starters:
                last = samples[load][label][-1]
                last["ratio"] = last["pairings_per_s"] / base if base else None
        print(f"  round {index + 1}/{args.rounds} done; load average {os.getloadavg()[0]:.2f}", flush=True)
    for server in servers.values():
        server.child.stop()
    return samples


def spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of the values."""
    if not values:
        return "-"
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per load and variant: medians and ranges over the rounds."""
    rows = []
    for load, by_variant in samples.items():
        base_cpu = statistics.median(s["cpu_us_per_pairing"] for s in by_variant[BASELINE])
        for label, runs in by_variant.items():
            cpu = [s["cpu_us_per_pairing"] for s in runs if s["cpu_us_per_pairing"]]
            rows.append({"load": load, "variant": label,
                         "pairings_per_s": spread([s["pairings_per_s"] for s in runs], ",.0f"),
                         "ratio": spread([s["ratio"] for s in runs if s["ratio"]], ".2f"),
                         "cpu_us_per_pairing": spread(cpu, ".0f"),
                         "cpu_ratio": f"{statistics.median(cpu) / base_cpu:.2f}" if cpu and base_cpu else "-",
                         "p50_ms": spread([s["p50_ms"] for s in runs], ".3f"),
                         "p99_ms": spread([s["p99_ms"] for s in runs], ".3f"),
                         "errors": sum(s["errors"] for s in runs)})
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per load and variant, {args.concurrency} pairs in flight per "
          f"load thread (light: 1); median (min-max) over rounds; ratio = pairings/s / {BASELINE}'s in the same round; "
          "CPU ratio = median CPU/pairing / the baseline's")
    head = ("load", "variant", "pairings/s", "ratio", "CPU us/pairing", "CPU ratio", "p50 ms", "p99 ms", "errors")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in ("load", "variant", "pairings_per_s", "ratio",
                                                           "cpu_us_per_pairing", "cpu_ratio", "p50_ms", "p99_ms",
                                                           "errors")) + " |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring every variant (default 5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="loadgen duration per measurement (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="pairs in flight per load thread (default 64)")
    parser.add_argument("--waiters", type=int, default=10_000, help="waiters for the memory check; 0 skips it")
    parser.add_argument("--tcpunchd", type=Path, default=None, help="a tcpunchd binary to measure as well")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="our server from another checkout (a git worktree), to compare versions")
    parser.add_argument("--skip", action="append", default=[], metavar="LABEL", help="leave a variant out")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 < args.seconds <= 60 or not 1 <= args.concurrency <= 10_000:
        parser.error("rounds 1..50, seconds 0..60, concurrency 1..10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with children_killed_on_exit():
        loadgen = build("loadgen.c", "loadgen", "-pthread")
        before = os.getloadavg()
        print(f"loadgen: {loadgen.relative_to(REPO)}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
              f"load average {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}", flush=True)
        samples = rounds(args, loadgen)
    rows = summarize(samples)
    print_table(rows, args)
    after = os.getloadavg()
    print(f"\nload average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    write_report("rendezvous_server", {"rounds": args.rounds, "seconds": args.seconds,
                                        "concurrency": args.concurrency, "load_before": before, "load_after": after,
                                        "rows": rows, "samples": samples})
    if args.waiters:
        import rendezvous_memory

        return rendezvous_memory.main(["--waiters", str(args.waiters)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
