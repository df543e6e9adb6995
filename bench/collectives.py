"""Collectives of our ``Communicator`` on loopback, against torch.distributed's gloo backend.

What is timed, for world sizes 2, 4 and 8, each rank a separate (spawned) process, both
backends in the same run against the same machine:

* allreduce (sum) of a 1 MiB and a 4 MiB float32 array, started two ways (the ``start`` column):

  - ``b2b``: back to back, as a loop of collectives runs; each rank times each call;
  - ``idle``: every call after ~20 ms of idleness, all ranks released at one shared
    ``time.monotonic()`` instant (one clock for every process on Linux), as after a compute
    step; each rank's time runs from that instant, so a rank the scheduler wakes late counts;
  - (``barrier``, with ``--starts``: after an untimed barrier of the backend under test, which
    folds that barrier's exit skew into the sample, and so favours the faster barrier);

* barrier: back to back (a barrier is its own synchronisation).

The sample of an iteration is the slowest rank's time (a collective is done when its last rank
is); the table shows the median and p90 of those samples, ours next to gloo's, their ratio, and
the CPU time of all ranks together per iteration (on 2 cores, 4 or 8 ranks are CPU-bound: wall
time is about that CPU time / 2). Gloo's all_reduce works in place, so each iteration gets a
fresh copy of the input outside the clock; ours returns a new array, and its copy is timed. The
first (warm-up) iteration of every allreduce is checked on every rank against the exact
expected sum, so a broken collective fails the bench instead of being timed.

Setup, at 8 ranks: the ranks are released at a shared instant, construct a Communicator and
call ``connect_all()``; the sample is the time from that instant until the last rank has all
its links. Repeated with a fresh communicator name per run, in the same processes; gloo's is
``init_process_group`` with a TCPStore on a fresh port per run (gloo connects its full mesh
inside that call).

The issue's targets: allreduce of 1 MB and 4 MB never slower than 1.5x gloo (judged here on the
p50s); setup p50 under 100 ms with no slow outliers. With more ranks than cores the barrier
mostly measures the scheduler: it is reported, not judged.

Run: ``.venv/bin/python bench/collectives.py [--quick]``. Results: a table on stdout and
``bench/out/collectives.json``. Every rank works against deadlines, and leftover processes are
killed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import queue
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy
from _harness import HOST, OUT, children_killed_on_exit, start_ours, write_report

from services.ports import free_ports

MIB = 1 << 20
SIZES = (1 * MIB, 4 * MIB)
WORLD_SIZES = (2, 4, 8)
SETUP_WORLD_SIZE = 8
OP_TIMEOUT = 30.0  # one operation (or one setup) of one rank, either backend
BARRIER_TIMEOUT = 60.0  # the multiprocessing barrier that lines the ranks up
SETUP_LEAD = 0.15  # setup runs start this long after rank 0 left the line-up
IDLE_LEAD = 0.02  # the same for each allreduce started "idle"
STARTS = ("b2b", "idle", "barrier")
TARGET_RATIO = 1.5  # allreduce, ours / gloo
TARGET_SETUP_P50_MS = 100.0


# -- what every rank does --------------------------------------------------------------------
def pattern(nbytes: int, rank: int) -> numpy.ndarray:
    """Rank ``rank``'s input: small integers (exact in float32), different on every element and rank."""
    return ((numpy.arange(nbytes // 4, dtype=numpy.int64) % 4093) + rank).astype(numpy.float32)


def expected_sum(nbytes: int, world_size: int) -> numpy.ndarray:
    base = (numpy.arange(nbytes // 4, dtype=numpy.int64) % 4093) * world_size
    return (base + world_size * (world_size - 1) // 2).astype(numpy.float32)


class Backend:
    """What the bench does with a backend; one subclass each for ours and gloo."""

    def setup(self, run: int) -> None: ...
    def teardown(self) -> None: ...
    def barrier(self) -> None: ...
    def allreduce_prepare(self, x: numpy.ndarray) -> Any: ...
    def allreduce(self, prepared: Any) -> numpy.ndarray: ...


class Ours(Backend):
    def __init__(self, rank: int, world_size: int, plan: dict[str, Any]) -> None:
        from services.rendezvous.comm import Communicator

        self.make = lambda name: Communicator(rank, world_size, name, HOST, plan["port"], timeout=OP_TIMEOUT)
        self.names = plan["comm_names"]
        self.comm: Any = None

    def setup(self, run: int) -> None:
        self.comm = self.make(self.names[run])
        self.comm.connect_all()

    def teardown(self) -> None:
        self.comm.close()

    def barrier(self) -> None:
        self.comm.barrier()

    def allreduce_prepare(self, x: numpy.ndarray) -> Any:
        return x  # our allreduce copies its input

    def allreduce(self, prepared: Any) -> numpy.ndarray:
        return self.comm.allreduce(prepared, "sum")


class Gloo(Backend):
    def __init__(self, rank: int, world_size: int, plan: dict[str, Any]) -> None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # 8 ranks on 2 cores: no intra-op thread pools fighting
        self.torch, self.dist = torch, dist
        self.rank, self.world_size, self.ports = rank, world_size, plan["gloo_ports"]
        self.tensor: Any = None

    def setup(self, run: int) -> None:
        self.dist.init_process_group("gloo", init_method=f"tcp://{HOST}:{self.ports[run]}", rank=self.rank,
                                     world_size=self.world_size, timeout=timedelta(seconds=OP_TIMEOUT))

    def teardown(self) -> None:
        self.dist.destroy_process_group()

    def barrier(self) -> None:
        self.dist.barrier()

    def allreduce_prepare(self, x: numpy.ndarray) -> Any:
        # all_reduce works in place: hand it a fresh copy of the input each time, outside the clock
        if self.tensor is None or self.tensor.numel() != x.size:
            self.tensor = self.torch.empty(x.size, dtype=self.torch.float32)
        self.tensor.copy_(self.torch.from_numpy(x))
        return self.tensor

    def allreduce(self, prepared: Any) -> numpy.ndarray:
        self.dist.all_reduce(prepared)
        return prepared.numpy()


BACKENDS: dict[str, type[Backend]] = {"ours": Ours, "gloo": Gloo}


def _line_up(rank: int, line_up: Barrier, start: Synchronized, lead: float) -> tuple[float, float]:
    """Meet the other ranks, then sleep until a start instant they all share.

    Returns ``(origin, late)``: the shared ``time.monotonic()`` instant, and how long after it
    this rank woke (the scheduler's share, counted in the sample like everything after origin).
    """
    line_up.wait(BARRIER_TIMEOUT)
    if rank == 0:
        start.value = time.monotonic() + lead
    line_up.wait(BARRIER_TIMEOUT)  # rank 0 wrote the instant before anyone passes this
    origin = start.value
    with contextlib.suppress(ValueError):  # negative: already past it
        time.sleep(origin - time.monotonic())
    return origin, time.monotonic() - origin


def _setup_runs(backend: Backend, plan: dict[str, Any], rank: int, line_up: Barrier,
                start: Synchronized) -> list[dict[str, float]]:
    """Timed setups, each from a common start instant; the first ``setup_runs`` names/ports."""
    samples = []
    for run in range(plan["setup_runs"]):
        origin, _ = _line_up(rank, line_up, start, SETUP_LEAD)
        constructed = time.monotonic()
        backend.setup(run)
        done = time.monotonic()
        samples.append({"from_start": done - origin, "own": done - constructed})
        line_up.wait(BARRIER_TIMEOUT)  # nobody closes a link its peer is still opening
        backend.teardown()
    return samples


def _timed(backend: Backend, plan: dict[str, Any], rank: int, line_up: Barrier, start: Synchronized,
           run: Callable[[Any], Any], how: str = "b2b", n: int = 0, prepare: Callable[[], Any] | None = None,
           check: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """``warmup`` untimed then ``n`` timed ``run(prepare())``, each started ``how`` (see the module).

    Wall and CPU seconds of each timed call; ``check`` judges the first (untimed) result.
    """
    wall, cpu, late, checked = [], [], [], None
    for i in range(plan["warmup"] + n):
        prepared = prepare() if prepare is not None else None
        lateness = 0.0
        if how == "idle":
            began, lateness = _line_up(rank, line_up, start, IDLE_LEAD)
        else:
            if how == "barrier":
                backend.barrier()
            began = time.monotonic()
        cpu_began = time.process_time()
        result = run(prepared)
        ended, cpu_ended = time.monotonic(), time.process_time()
        if i == 0 and check is not None:
            checked = check(result)
        if i >= plan["warmup"]:
            wall.append(ended - began)
            cpu.append(cpu_ended - cpu_began)
            late.append(lateness)
        del result  # our allreduce returns a fresh array: free it outside the clock
    return {"samples": wall, "cpu": cpu, "late": late, "check": checked}


def run_rank(name: str, rank: int, world_size: int, plan: dict[str, Any], line_up: Barrier,
             start: Synchronized, results: Queue[dict[str, Any]]) -> None:
    """Body of one rank's process: setup runs (if planned), then every timed collective."""
    report: dict[str, Any] = {"backend": name, "rank": rank, "configs": {}, "setup": [], "error": None}
    try:
        backend = BACKENDS[name](rank, world_size, plan)
        report["setup"] = _setup_runs(backend, plan, rank, line_up, start)
        line_up.wait(BARRIER_TIMEOUT)
        started = time.monotonic()
        backend.setup(plan["setup_runs"])  # the communicator (process group) the collectives use
        report["connect_s"] = time.monotonic() - started
        for nbytes in plan["sizes"]:
            x, good = pattern(nbytes, rank), expected_sum(nbytes, world_size)
            for how in plan["starts"]:
                report["configs"][f"allreduce/{nbytes}/{how}"] = _timed(
                    backend, plan, rank, line_up, start, backend.allreduce, how, plan["n_allreduce"],
                    prepare=lambda x=x: backend.allreduce_prepare(x),
                    check=lambda result, good=good: bool(result.shape == good.shape
                                                         and numpy.array_equal(result, good)))
        report["configs"]["barrier/0/b2b"] = _timed(backend, plan, rank, line_up, start,
                                                    lambda _: backend.barrier(), "b2b", plan["n_barrier"])
        backend.teardown()
    except BaseException as exc:  # report it: the parent turns a silent rank into a failed row
        report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"[:2000]
        line_up.abort()
    results.put(report)


def run_group(name: str, world_size: int, plan: dict[str, Any], budget: float) -> dict[int, dict[str, Any]]:
    """``world_size`` ranks of backend ``name`` as spawned processes; their reports by rank."""
    context = mp.get_context("spawn")
    line_up = context.Barrier(world_size)
    start = context.Value("d", 0.0)
    results: Queue[dict[str, Any]] = context.Queue()
    ranks = [context.Process(target=run_rank, args=(name, rank, world_size, plan, line_up, start, results),
                             daemon=True, name=f"{name}-rank{rank}") for rank in range(world_size)]
    collected: dict[int, dict[str, Any]] = {}
    try:
        for process in ranks:
            process.start()
        deadline = time.monotonic() + budget
        while len(collected) < world_size and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                got = results.get(timeout=0.5)
                collected[got["rank"]] = got
            if len(collected) < world_size and not any(p.is_alive() for p in ranks) and results.empty():
                break
    finally:
        for process in ranks:
            process.join(max(0.1, 3.0 / world_size))
        for process in ranks:
            if process.is_alive():
                process.kill()
                process.join(2.0)
    for rank in range(world_size):
        collected.setdefault(rank, {"rank": rank, "configs": {}, "setup": [],
                                    "error": f"no report within {budget:g} s (killed or crashed)"})
    return collected


# -- statistics and report -------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values``: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def combine(reports: dict[int, dict[str, Any]], key: str) -> dict[str, Any]:
    """Per-iteration slowest-rank samples of one configuration, in ms, with median and p90."""
    per_rank = [r["configs"].get(key) for r in reports.values()]
    errors = sorted({r["error"].splitlines()[0] for r in reports.values() if r.get("error")})
    if any(p is None for p in per_rank):
        return {"ok": False, "errors": errors}
    n = min(len(p["samples"]) for p in per_rank)
    ms = [1e3 * max(p["samples"][i] for p in per_rank) for i in range(n)]
    checks = [p["check"] for p in per_rank]
    out: dict[str, Any] = {"ok": bool(ms) and False not in checks, "check": None if None in checks else all(checks),
                           "errors": errors, "n": n}
    if ms:
        cpu = [1e3 * sum(p["cpu"][i] for p in per_rank) for i in range(n)]
        late = [1e3 * max(p["late"][i] for p in per_rank) for i in range(n)]
        out.update(p50_ms=round(percentile(ms, 50), 3), p90_ms=round(percentile(ms, 90), 3),
                   min_ms=round(min(ms), 3), max_ms=round(max(ms), 3),
                   cpu_p50_ms=round(percentile(cpu, 50), 3), late_p50_ms=round(percentile(late, 50), 3),
                   late_max_ms=round(max(late), 3), samples_ms=[round(v, 3) for v in ms])
    return out


def combine_setup(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per run: from the common start to the last rank done (and the slowest rank's own time)."""
    runs = min((len(r["setup"]) for r in reports.values()), default=0)
    if runs == 0:
        return {"runs": 0}
    from_start = [1e3 * max(r["setup"][i]["from_start"] for r in reports.values()) for i in range(runs)]
    own = [1e3 * max(r["setup"][i]["own"] for r in reports.values()) for i in range(runs)]
    return {"runs": runs, "p50_ms": round(percentile(from_start, 50), 2), "max_ms": round(max(from_start), 2),
            "own_p50_ms": round(percentile(own, 50), 2), "own_max_ms": round(max(own), 2),
            "samples_ms": [round(v, 2) for v in from_start]}


def _size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes else "-"


def print_report(rows: list[dict[str, Any]], setup: dict[str, dict[str, Any]], plan: dict[str, Any]) -> None:
    print(f"\ncollectives on loopback, ms: slowest rank per iteration, p50 and p90 of {plan['n_allreduce']} "
          f"allreduces or {plan['n_barrier']} barriers per row after {plan['warmup']} warm-up;\n"
          "start: b2b = back to back, idle = all ranks from one instant after ~20 ms idle, barrier = after the "
          "backend's barrier;\ncpu: CPU time of all ranks together per iteration (p50)")
    head = (f"{'operation':<10} {'size':>6} {'start':>7} {'ranks':>5} {'ours p50':>9} {'ours p90':>9} "
            f"{'gloo p50':>9} {'gloo p90':>9} {'ratio p50':>9} {'ratio p90':>9} {'ours cpu':>9} {'gloo cpu':>9}  note")
    print(head)
    print("-" * len(head))
    for row in rows:
        ours, gloo = row["ours"], row["gloo"]

        def cell(stats: dict[str, Any], key: str) -> str:
            return f"{stats[key]:>9.2f}" if key in stats else f"{'failed' if stats else '-':>9}"

        ratio = {k: ours[f"{k}_ms"] / gloo[f"{k}_ms"] for k in ("p50", "p90")
                 if f"{k}_ms" in ours and f"{k}_ms" in gloo and gloo[f"{k}_ms"] > 0}
        notes = []
        if row["op"] == "allreduce":
            for label, stats in (("ours", ours), ("gloo", gloo)):
                if stats.get("check") is False:
                    notes.append(f"WRONG RESULT ({label})")
            if "p50" in ratio:
                verdict = "met" if ratio["p50"] <= TARGET_RATIO else "MISSED"
                notes.append(f"target <= {TARGET_RATIO:g}x {verdict}")
        elif row["world_size"] > (os.cpu_count() or 1):
            notes.append("more ranks than cores: scheduler-bound")
        ratio_cells = " ".join(f"{ratio[k]:>8.2f}x" if k in ratio else f"{'-':>9}" for k in ("p50", "p90"))
        print(f"{row['op']:<10} {_size_label(row['nbytes']):>6} {row['start']:>7} {row['world_size']:>5} "
              f"{cell(ours, 'p50_ms')} {cell(ours, 'p90_ms')} {cell(gloo, 'p50_ms')} {cell(gloo, 'p90_ms')} "
              f"{ratio_cells} {cell(ours, 'cpu_p50_ms')} {cell(gloo, 'cpu_p50_ms')}  {'; '.join(notes)}")
    late = {b: max(row[b]["late_max_ms"] for row in rows if row["start"] == "idle" and "late_max_ms" in row[b])
            for b in ("ours", "gloo") if any(row["start"] == "idle" and "late_max_ms" in row[b] for row in rows)}
    if late:
        print("(idle start: latest wake-up of any rank after the shared instant, counted in its sample: "
              + ", ".join(f"{b} {v:.2f} ms" for b, v in late.items()) + ")")
    for label, stats in setup.items():
        if not stats.get("runs"):
            print(f"\nsetup {label}: no runs completed")
            continue
        what = "Communicator() + connect_all()" if label == "ours" else "init_process_group (TCPStore)"
        print(f"\nsetup {label:<4} {SETUP_WORLD_SIZE} ranks, {stats['runs']} runs, {what}, common start to last rank "
              f"linked: p50 {stats['p50_ms']:.1f} ms, max {stats['max_ms']:.1f} ms "
              f"(slowest rank's own time: p50 {stats['own_p50_ms']:.1f}, max {stats['own_max_ms']:.1f}); "
              f"runs: {', '.join(f'{v:.1f}' for v in stats['samples_ms'])}")
    ours, gloo = setup.get("ours", {}), setup.get("gloo", {})
    if ours.get("runs"):
        ratio = f"; ours/gloo p50 {ours['p50_ms'] / gloo['p50_ms']:.2f}x" if gloo.get("runs") else ""
        verdict = "met" if ours["p50_ms"] < TARGET_SETUP_P50_MS else "MISSED"
        print(f"setup target for ours: p50 < {TARGET_SETUP_P50_MS:g} ms: {verdict} ({ours['p50_ms']:.1f}){ratio}")
    for row in rows:
        for backend in ("ours", "gloo"):
            for error in row[backend].get("errors", []):
                print(f"  {backend} {row['op']} {row['world_size']} ranks error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and setup runs (a smoke run)")
    parser.add_argument("--n-allreduce", type=int, default=None, help="timed allreduces per row (default 30)")
    parser.add_argument("--n-barrier", type=int, default=None, help="timed barriers per row (default 100)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3)")
    parser.add_argument("--setup-runs", type=int, default=None, help="timed setups at 8 ranks (default 7)")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=["b2b", "idle"],
                        help="how the allreduces start (default: b2b idle; see the module docstring)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=list(WORLD_SIZES))
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    args = parser.parse_args(argv)
    quick = {"n_allreduce": 5, "n_barrier": 10, "warmup": 1, "setup_runs": 3}
    # ~40 s on 2 cores; more samples than the minimum because gloo's timings at 2 and 4 ranks are bimodal
    full = {"n_allreduce": 30, "n_barrier": 100, "warmup": 3, "setup_runs": 7}
    plan: dict[str, Any] = {k: getattr(args, k) if getattr(args, k) is not None else (quick if args.quick else full)[k]
                            for k in full}
    plan["warmup"] = max(plan["warmup"], 1)  # the first iteration is the checked one
    plan["sizes"] = list(SIZES)
    plan["starts"] = args.starts
    OUT.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    setup: dict[str, dict[str, Any]] = {}
    connect: dict[str, dict[int, float]] = {backend: {} for backend in args.backends}
    began = time.monotonic()
    with children_killed_on_exit():
        server = start_ours("uvloop", "ours/uvloop-collectives")
        try:
            print(f"server: ours/uvloop on {HOST}:{server.port}; {os.cpu_count()} CPUs; "
                  f"Python {sys.version.split()[0]}", flush=True)
            for world_size in args.world_sizes:
                for backend in args.backends:
                    setup_runs = plan["setup_runs"] if world_size == SETUP_WORLD_SIZE else 0
                    group_plan = {**plan, "setup_runs": setup_runs, "port": server.port,
                                  "comm_names": [secrets.token_hex(16) for _ in range(setup_runs + 1)],
                                  "gloo_ports": free_ports(setup_runs + 1)}
                    work = (len(SIZES) * len(plan["starts"]) * (plan["warmup"] + plan["n_allreduce"]) * 0.5
                            + (plan["warmup"] + plan["n_barrier"]) * 0.1 + setup_runs * 2.0)
                    started = time.monotonic()
                    reports = run_group(backend, world_size, group_plan, budget=60.0 + 5.0 * world_size + work)
                    print(f"  {backend:<4} {world_size} ranks: {time.monotonic() - started:5.1f} s", flush=True)
                    keys = [("allreduce", nbytes, how) for nbytes in SIZES for how in plan["starts"]]
                    for op, nbytes, how in [*keys, ("barrier", 0, "b2b")]:
                        row = rows.setdefault((op, nbytes, how, world_size), {
                            "op": op, "nbytes": nbytes, "start": how, "world_size": world_size})
                        row[backend] = combine(reports, f"{op}/{nbytes}/{how}")
                    times = [r["connect_s"] for r in reports.values() if "connect_s" in r]
                    if len(times) == world_size:
                        connect[backend][world_size] = round(1e3 * max(times), 2)
                    if setup_runs:
                        setup[backend] = combine_setup(reports)
        finally:
            server.child.stop()
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[0] != "allreduce", k[1], STARTS.index(k[2]), k[3]))]
    for row in ordered:
        for backend in ("ours", "gloo"):
            row.setdefault(backend, {"ok": False, "errors": ["not run"]} if backend in args.backends else {})
    print_report(ordered, setup, plan)
    print(f"\nconnect_all / init_process_group before the timed rows, slowest rank (ms): {connect}")
    print(f"total {time.monotonic() - began:.0f} s")
    write_report("collectives", {"plan": plan, "rows": ordered, "setup": setup,
                                 "connect_ms": connect, "targets": {"allreduce_ratio": TARGET_RATIO,
                                                                    "setup_p50_ms": TARGET_SETUP_P50_MS}})
    failed = [row for row in ordered for b in args.backends if not row[b].get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
