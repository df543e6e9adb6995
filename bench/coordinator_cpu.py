"""Where a fan-out rank's CPU goes, process by process and part by part, against bare boto3.

Why: on two cores shared by the coordinator, moto and the runtime's sandboxes, the fan-out's rate
is set by the CPU every rank costs across all of them, so a gap to bare boto3 is CPU someone
spends that bare boto3 does not. For bare boto3 and for a coordinator job (no communicator,
no-op handler), in interleaved rounds, this prints each process's CPU per rank (this process,
moto, the runtime with its sandboxes, from ``/proc``), and for the job the thread CPU of its parts
(``time.thread_time`` around each call): a rank's thread (and of it the invoke), the wave
declarations, the journal's flushes, and the work after the fan-out (summary, compaction), and
the wall time its rank threads found no declared rank ready. It wraps those methods in this
process only; nothing is changed for the service.

Only the CPU spent during the fan-out sets its rate (first start to last end: what
``bench/coordinator.py`` divides by); planning and submitting before it, the summary and the
compaction after it, do not. So each process's CPU is also sampled every 50 ms and read at the
span's two ends ("in the span"), beside its whole-job figure.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/coordinator_cpu.py [--ranks 4000] [--rounds 2]
[--declare-ahead 2,8]``
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import BENCH, OUT, REPO, children_killed_on_exit
from _sampler import Ticking
from coordinator import BUCKET, bare_boto3, seed, through_coordinator
from lambda_runtime import start_runtime

from services.coordinator import invoker, journal, runner, waves
from services.local.s3server import S3Server
from services.s3store import S3Store

TICKS = os.sysconf("SC_CLK_TCK")
PARTS: dict[str, float] = {}
#: Not CPU: wall seconds, summed over the rank threads, of finding no declared rank ready.
WAITED = "waiting for a declared rank (wall, summed over threads)"
_lock = threading.Lock()


def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` adding its calling thread's CPU seconds to ``PARTS[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            with _lock:
                PARTS[name] = PARTS.get(name, 0.0) + time.thread_time() - started

    return wrapper


runner.JobRunner._run_rank = timed("a rank's thread", runner.JobRunner._run_rank)  # type: ignore[method-assign]
invoker.Invoker.invoke = timed("  of which the invoke", invoker.Invoker.invoke)  # type: ignore[method-assign]
runner.JobRunner._declare = timed("wave declarations", runner.JobRunner._declare)  # type: ignore[method-assign]
journal.RankJournal.flush = timed("journal flushes (JSON, PUT)", journal.RankJournal.flush)  # type: ignore[method-assign]
runner.JobRunner._complete = timed("after the fan-out", runner.JobRunner._complete)  # type: ignore[method-assign]
_next = waves.Waves.next


def next_rank(self: waves.Waves) -> int | None:
    """:meth:`.waves.Waves.next`, adding the wall seconds a thread found no declared rank ready to
    ``PARTS``: the fan-out waiting for its own journal."""
    dry, started = not self._ready, time.perf_counter()
    try:
        return _next(self)
    finally:
        if dry:
            with _lock:
                PARTS[WAITED] = PARTS.get(WAITED, 0.0) + time.perf_counter() - started


waves.Waves.next = next_rank  # type: ignore[method-assign]


def stat(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat``'s fields after the command name, [] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_ticks(pid: int) -> int:
    """The process's CPU clock ticks, with those of its children it has reaped."""
    return sum(int(value) for value in stat(pid)[11:15])


def cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every process below it (reaped children included)."""
    return sum(cpu_ticks(pid) for pid in descendants(root)) / TICKS


def descendants(root: int) -> list[int]:
    """``root`` and every process below it now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(entry)):
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


class SpanCpu(Ticking):
    """Each group of processes' CPU seconds, sampled every 50 ms with the wall clock, so that the CPU
    spent between two instants (a fan-out's first start and last end) can be read off afterwards."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        super().__init__(0.05)
        self.groups = groups
        self.samples: list[tuple[float, list[float]]] = []
        self.tick()

    def tick(self) -> None:
        now = time.time()
        self.samples.append((now, [sum(map(cpu_ticks, pids)) / TICKS for pids in self.groups.values()]))

    def at(self, when: float) -> list[float]:
        """Each group's CPU seconds at ``when``, interpolated between the samples around it."""
        before = max((s for s in self.samples if s[0] <= when), key=lambda s: s[0], default=self.samples[0])
        after = min((s for s in self.samples if s[0] >= when), key=lambda s: s[0], default=self.samples[-1])
        share = (when - before[0]) / (after[0] - before[0]) if after[0] > before[0] else 0.0
        return [a + (b - a) * share for a, b in zip(before[1], after[1], strict=True)]

    def between(self, start: float, end: float) -> list[float]:
        return [b - a for a, b in zip(self.at(start), self.at(end), strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=4000)
    parser.add_argument("--sandboxes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--declare-ahead", default="8", help="the jobs' COSMIC_COORDINATOR_DECLARE_AHEAD, "
                        "comma-separated for one job each per round (default 8)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")]))
    print(f"load average at start {os.getloadavg()[0]:.1f} (2 cores, shared)")
    with children_killed_on_exit(), S3Server(log_path=OUT / "coordinator-cpu-s3.log") as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        store = S3Store()
        store.client.create_bucket(Bucket=BUCKET)
        seed(store, "rate", 10)
        proc, endpoint = start_runtime(args.sandboxes, "coordinator-cpu-runtime", "noop_handler.succeed")
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint
        try:
            bare_boto3(endpoint, 50, args.sandboxes)
            groups = {"this process": [os.getpid()], "moto": descendants(s3._child.pid),  # type: ignore[union-attr]
                      "runtime": descendants(proc.pid)}
            kinds = [0] + [int(ahead) for ahead in args.declare_ahead.split(",")]  # 0: bare boto3
            for round_ in range(args.rounds):
                for ahead in (kinds if round_ % 2 == 0 else kinds[::-1]):
                    PARTS.clear()
                    before = (time.process_time(), cpu_seconds(s3._child.pid), cpu_seconds(proc.pid))  # type: ignore[union-attr]
                    with SpanCpu(groups) as sampled:
                        if ahead:
                            job = through_coordinator(store, args.ranks, args.sandboxes, f"cpu-{round_}-{ahead}",
                                                      declare_ahead=ahead)
                            rate, span = job["per_s"], job["span"]
                        else:
                            started = time.time()
                            rate = bare_boto3(endpoint, args.ranks, args.sandboxes)[0]
                            span = (started, time.time())
                    after = (time.process_time(), cpu_seconds(s3._child.pid), cpu_seconds(proc.pid))  # type: ignore[union-attr]
                    per = [(b - a) * 1e3 / args.ranks for a, b in zip(before, after, strict=True)]
                    inside = [seconds * 1e3 / args.ranks for seconds in sampled.between(*span)]
                    print(f"{f'job, declare ahead {ahead}' if ahead else 'bare boto3'}: {rate:.0f}/s; CPU ms per "
                          f"rank: this process {per[0]:.2f}, moto {per[1]:.2f}, runtime and sandboxes {per[2]:.2f}, "
                          f"all {sum(per):.2f}; in the span: {inside[0]:.2f}, {inside[1]:.2f}, {inside[2]:.2f}, "
                          f"all {sum(inside):.2f}")
                    for name, seconds in PARTS.items():
                        print(f"    {name}: {seconds * 1e3 / args.ranks:.3f} ms" if name != WAITED
                              else f"    {name}: {seconds:.2f} s")
        finally:
            proc.stop()
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
