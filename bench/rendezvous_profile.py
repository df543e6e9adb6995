"""Where the rendezvous server's time goes: Python functions and system calls per pairing.

Two looks at one server process under ``loadgen`` load (1 thread, 64 pairs in flight):

* ``cprofile``: the server runs in this process under cProfile; the table gives each function's
  own time and calls per pairing (uvloop's Cython internals show up only as the callbacks they
  make into Python, so compare the profile's total with the process's CPU time);
* ``strace``: the server runs as a child and ``strace -c -f`` counts its system calls; the table
  gives calls per pairing by name (strace slows the server a lot: count, never time, from it;
  slowed, the server always finds a backlog, so a failing accept or first read hardly shows);
* ``perf``: ``perf stat`` counts the same calls from kernel tracepoints at full speed, and the
  context switches, for the C baseline and our server side by side, at 64 pairs in flight and at
  the light load (1 pair in flight): the figures to trust (needs ``perf``; skipped without it).

``--hub c`` profiles the C hub: cProfile then sees only Python's side (the sweep, the health
port), since the C hub's thread runs no Python; the syscall count is the comparable figure.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/rendezvous_profile.py [--seconds 3]
[--loop uvloop|asyncio] [--hub c|python] [--top 15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import HOST, OUT, children_killed_on_exit, start_ours
from rendezvous_server import BASELINE, build, run_loadgen, start_printing

from services.rendezvous.config import ServerSettings
from services.rendezvous.server import RendezvousServer


def profile_in_process(loop: str, hub: str, seconds: float, top: int) -> None:
    """Serve in this process under cProfile while loadgen runs; print the top functions per pairing."""
    loadgen = build("loadgen.c", "loadgen", "-pthread")
    settings = ServerSettings(host=HOST, port=0, health_port=-1, loop=loop, hub=hub)
    server = RendezvousServer(settings)
    result: dict[str, object] = {}

    async def main() -> None:
        await server.start()
        profiler = cProfile.Profile()
        cpu = time.process_time()
        profiler.enable()
        result.update(await asyncio.to_thread(run_loadgen, loadgen, server.address[1], seconds, 1, 64))
        profiler.disable()
        result["cpu"] = time.process_time() - cpu
        result["profiler"] = profiler
        await server.stop()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    pairings = int(result["pairings"])  # type: ignore[call-overload]
    stats = pstats.Stats(result["profiler"], stream=io.StringIO())  # type: ignore[arg-type]
    print(f"\ncProfile ({loop}, {hub} hub): {pairings:,} pairings, process CPU {result['cpu']:.2f} s "
          f"= {1e6 * float(result['cpu']) / pairings:.0f} us/pairing (profiled, so slower than unprofiled)")  # type: ignore[arg-type]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    print(f"{'own us/pairing':>15} {'calls/pairing':>14}  function")
    for (path, line, name), (_, calls, own, _, _) in rows:
        print(f"{1e6 * own / pairings:>15.1f} {calls / pairings:>14.2f}  {os.path.basename(path)}:{line} {name}")


def count_syscalls(loop: str, hub: str, seconds: float) -> None:
    """strace -c -f on our server as a child, while loadgen runs; print calls per pairing."""
    if not shutil.which("strace"):
        print("\nstrace: not installed, skipped")
        return
    loadgen = build("loadgen.c", "loadgen", "-pthread")
    server = start_ours(loop, f"ours-{hub}/{loop}-strace", "--hub", hub)
    with tempfile.NamedTemporaryFile(suffix=".strace") as report:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", report.name, "-p", str(server.child.pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # strace attaches to every thread
        result = run_loadgen(loadgen, server.port, seconds, 1, 64)
        tracer.terminate()
        tracer.wait(timeout=30)
        text = Path(report.name).read_text()
    server.child.stop()
    pairings = int(result["pairings"])
    print(f"\nstrace ({loop}, {hub} hub): {pairings:,} pairings (slowed by strace)")
    for line in text.splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if match and int(match.group(1)) >= pairings / 20:
            print(f"  {int(match.group(1)) / pairings:6.2f} per pairing  {match.group(2)}")


#: The calls ``perf stat`` counts (the ones a pairing makes, on any of the servers).
PERF_CALLS = ("accept", "accept4", "recvfrom", "sendto", "close", "epoll_wait", "epoll_pwait", "epoll_ctl",
              "getsockname")


def perf_syscalls(loop: str, hub: str, seconds: float) -> None:
    """perf stat on the C baseline and on our server while loadgen runs; calls per pairing."""
    if not shutil.which("perf"):
        print("\nperf: not installed, skipped")
        return
    loadgen = build("loadgen.c", "loadgen", "-pthread")
    events = ",".join([*(f"syscalls:sys_enter_{call}" for call in PERF_CALLS), "raw_syscalls:sys_enter",
                       "context-switches"])
    for label in (BASELINE, f"ours-{hub}/{loop}"):
        for threads, concurrency in ((1, 64), (1, 1)):
            server = (start_printing([str(build("tcpunch_baseline.c", "tcpunch_baseline")), HOST, "0"], BASELINE)
                      if label == BASELINE else start_ours(loop, f"ours-{hub}/{loop}-perf", "--hub", hub))
            with tempfile.NamedTemporaryFile(suffix=".perf") as report:
                counter = subprocess.Popen(["perf", "stat", "-x", ",", "-o", report.name, "-e", events, "-p",
                                            str(server.child.pid)], stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                result = run_loadgen(loadgen, server.port, seconds, threads, concurrency)
                counter.send_signal(signal.SIGINT)
                counter.wait(timeout=30)
                text = Path(report.name).read_text()
            server.child.stop()
            pairings = int(result["pairings"])
            counts = [(fields[2].replace("syscalls:sys_enter_", ""), int(fields[0])) for fields in
                      (line.split(",") for line in text.splitlines()) if len(fields) > 3 and fields[0].isdigit()]
            print(f"\nperf ({label}, {concurrency} pair(s) in flight): {pairings:,} pairings; per pairing: "
                  + ", ".join(f"{name} {count / pairings:.2f}" for name, count in counts if count >= pairings / 50))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--hub", choices=["c", "python"], default="c")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60:
        parser.error("seconds 0..60")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}")
    with children_killed_on_exit():
        profile_in_process(args.loop, args.hub, args.seconds, args.top)
        count_syscalls(args.loop, args.hub, args.seconds)
        perf_syscalls(args.loop, args.hub, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
