"""The coordinator's own costs at scale: planning, fan-out, the summary, its memory and status.

1. Planning: listing and planning ``--partitions`` partitions (10,000 by default) against the S3
   server, with three S3 clients in interleaved rounds (:func:`listing_clients`). The wall time is
   mostly moto's server (a child process); the coordinator's own time is the planning thread's CPU
   time (``time.thread_time``), which must stay under a second.
2. Fan-out, in ``--rounds`` interleaved rounds: one job of ``--ranks`` ranks (no communicator)
   through the coordinator's service (planning, every attempt in S3 before it is sent, our
   retries) against the local Lambda runtime running a no-op handler, against the baseline: the
   same count of bare boto3 invocations at the same concurrency (one thread per sandbox), so the
   ratio is what the coordinator adds, not parallelism. Also per job: its wall time, the summary's
   wall time (its result reads), this process's CPU per rank (against the baseline's CPU per
   invoke), and its peak RSS (sampled ``VmRSS``; moto and the runtime are children, so this
   process is the coordinator).
3. Status: ``Coordinator.status`` of the last job, with and without its per-rank list, time and
   JSON size.

Like the coordinator's process, this one settles its heap (:mod:`services.coordinator.heap`) once its
clients are built; each fan-out round reports the garbage collector's pauses.

``--profile`` samples every thread during the last coordinator job and prints where the CPU went.

Run: ``.venv/bin/python bench/coordinator.py [--ranks 10000] [--sandboxes 8] [--rounds 3] [--partitions 10000]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from typing import Any

import boto3
from _harness import BENCH, OUT, REPO, children_killed_on_exit, write_report
from _sampler import CollectorPauses, Sampler, Ticking, timed
from lambda_runtime import client, start_runtime

from services.contracts import WorkerEvent
from services.coordinator import config, heap
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, choose_partitions, plan
from services.coordinator.service import Coordinator
from services.coordinator.state import TERMINAL, Attempt, RankRecord
from services.local.s3server import S3Server
from services.s3store import S3Store, s3_client

BUCKET = "cosmic-bench-coordinator"
#: Seconds between two polls of a job's status: what ``cosmic submit`` waits (services/client/api.py).
#: This benchmark polled every 0.05 s before: ten times the client's rate, 9% of the coordinator's
#: busy samples while the status of a 10,000-rank job cost 2-3 ms.
POLL_S = 0.5


def collector_pauses(runs: list[dict[str, Any]]) -> str:
    """The collector's pauses over a variant's runs (each with :meth:`CollectorPauses.figures`)."""
    return (f"collector pauses {spread([run['gc_ms'] for run in runs])} ms, the longest "
            f"{spread([run['gc_longest_ms'] for run in runs])} ms, full collections "
            f"{[run['collections'][2] for run in runs]}")


def payload(prefix: str, partitions: int, world_size: int, concurrency: int, result: str = "") -> JobRequest:
    return JobRequest(bucket=BUCKET, file_limit=partitions, S3_object_name="model",
                      result_path=f"bench/{result or prefix}", data_bucket=BUCKET, data_prefix=prefix,
                      world_size=world_size, max_concurrency=concurrency, communicator=False,
                      assignment="wrap" if world_size > partitions else "contiguous")


def bare_boto3(endpoint: str, count: int, threads: int = 1, requests: list[bytes] | None = None) -> tuple[float, float]:
    """Invocations per second of ``count`` bare boto3 invokes from ``threads`` threads at once, and
    this process's CPU milliseconds per invoke (what the coordinator's CPU per rank compares with).
    With ``requests``, each invoke sends what the coordinator sends: its rank's event, ``LogType=Tail``."""
    lam = client(endpoint)

    def invoke(rank: int) -> None:
        if requests is None:
            lam.invoke(FunctionName="cosmic-worker", Payload=b'{"rank": %d}' % rank)["Payload"].read()
        else:
            lam.invoke(FunctionName="cosmic-worker", Payload=requests[rank], LogType="Tail")["Payload"].read()

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(invoke, range(count)))
    return count / (time.perf_counter() - started), (time.process_time() - cpu) * 1e3 / count


#: What each fan-out round runs (the order reversed every other round): the baseline; bare boto3
#: sending the coordinator's own requests (what the request itself costs: its event, the log tail);
#: the job with this benchmark's and the coordinator's settings before the fan-out work of
#: 2026-11-30 (two ranks per thread declared at once, status polled every 0.05 s); the job.
FANOUT = ("bare boto3", "bare boto3, the job's requests", "job, settings before", "job")
JOB_SETTINGS: dict[str, dict[str, Any]] = {"job, settings before": {"declare_ahead": 2, "poll_s": 0.05}, "job": {}}


def job_requests(ranks: int, sandboxes: int) -> list[bytes]:
    """The Invoke payloads of the benchmark's job, rank by rank, as the coordinator sends them."""
    planned = plan(payload("rate", 10, ranks, sandboxes), [Partition(f"rate/{i}.pt", 1) for i in range(1, 11)],
                   job_id="bench", function_timeout_s=900, max_world_size=ranks, rendezvous=None)
    return [json.dumps(event.to_dict()).encode() for event in planned.events]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss(Ticking):
    """This process's peak resident set while in the ``with`` block, sampled every 50 ms."""

    def __init__(self) -> None:
        super().__init__(0.05)
        self.peak = rss_mb()

    def tick(self) -> None:
        self.peak = max(self.peak, rss_mb())


def through_coordinator(store: S3Store, ranks: int, sandboxes: int, label: str,
                        sampler: Sampler | None = None, poll_s: float = POLL_S, **settings: Any) -> dict[str, Any]:
    """One job: its fan-out rate (first start to last end), wall, summary seconds, CPU per rank, peak RSS.
    Its status is polled every ``poll_s``; ``settings`` override the coordinator's (an old value
    against the new one in the same run)."""
    coordinator = Coordinator(config.load(max_concurrency_limit=sandboxes, invoke_retries=12, **settings), store)
    summary_s: list[float] = []
    coordinator._finish = timed(summary_s, coordinator._finish)  # type: ignore[method-assign]
    cpu = time.process_time()
    started = time.perf_counter()
    with PeakRss() as rss, CollectorPauses() as pauses, (sampler or contextlib.nullcontext()):
        job_id, _, _ = coordinator.submit(payload("rate", 10, ranks, sandboxes, result=label))
        while coordinator.status(job_id, ranks=False)["state"] not in TERMINAL:
            time.sleep(poll_s)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    status = coordinator.status(job_id)
    attempts = [a for rank in status["ranks"] for a in rank["attempts"]]
    first, last = min(a["started_at"] for a in attempts), max(a["ended_at"] for a in attempts)
    return {"per_s": len(attempts) / (last - first), "span": (first, last), "wall_s": wall,
            "summary_s": summary_s[0] if summary_s else None,
            "cpu_ms_per_rank": cpu * 1e3 / ranks, "peak_rss_mb": rss.peak, "states": status["ranks_by_state"],
            **pauses.figures(), "coordinator": coordinator, "job_id": job_id}


def status_cost(coordinator: Coordinator, job_id: str, ranks: bool) -> tuple[float, int]:
    """Seconds to build and encode the job's status, and its JSON size in bytes."""
    started = time.perf_counter()
    body = json.dumps(coordinator.status(job_id, ranks=ranks)).encode()
    return time.perf_counter() - started, len(body)


def serialisation_costs(count: int) -> dict[str, float]:
    """Milliseconds per ``count`` items of what each serialisation change replaced, old form and new,
    in this run: rank-record snapshots, their JSON, the manifest's events, a status poll's counts."""
    now = time.time()
    records = [RankRecord(rank, "succeeded", [Attempt(1, now, now, "succeeded", report={"duration_ms": 1.0},
                                                      response={"status": "succeeded", "rank": rank})])
               for rank in range(count)]
    planned = plan(payload("plan", 10, count, 8), [Partition(f"plan/{i}.pt", 1) for i in range(1, 11)],
                   job_id="bench", function_timeout_s=900, max_world_size=count, rendezvous=None)

    def old_event(event: WorkerEvent) -> dict[str, Any]:  # WorkerEvent.to_dict before: a deep copy
        data = dataclasses.asdict(event)
        data["partitions"] = list(event.partitions)
        return {k: v for k, v in data.items() if not (k in ("abort_key", "speculative") and v is None)}

    def ms(function: Any) -> float:
        started = time.perf_counter()
        function()
        return (time.perf_counter() - started) * 1e3

    def old_poll() -> None:  # Coordinator.status before, at every poll: counts by hand, the shares anew
        counts: dict[str, int] = {}
        for record in records:
            counts[str(record.state)] = counts.get(str(record.state), 0) + 1
        shares = {event.rank: len(event.partitions) for event in planned.events}
        assert len(shares) == count

    snapshots = [record.to_dict() for record in records]
    return {"status_poll_by_hand_ms": ms(old_poll),  # now a Counter, and the shares made once per job
            "status_poll_counter_ms": ms(lambda: Counter(map(attrgetter("state"), records))),
            "snapshot_asdict_ms": ms(lambda: [dataclasses.asdict(r) for r in records]),
            "snapshot_by_hand_ms": ms(lambda: [r.to_dict() for r in records]),
            "records_json_indented_ms": ms(lambda: json.dumps({"records": snapshots}, indent=2)),
            "records_json_compact_ms": ms(lambda: json.dumps({"records": snapshots}, separators=(",", ":"))),
            "events_asdict_ms": ms(lambda: [old_event(e) for e in planned.events]),
            "events_by_field_ms": ms(lambda: [e.to_dict() for e in planned.events])}


def seed(store: S3Store, prefix: str, count: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(BUCKET, f"{prefix}/{i}.pt", b"x"), range(1, count + 1)))


def planning(store: S3Store, partitions: int, world_size: int) -> dict[str, float]:
    """Wall and this thread's CPU seconds of listing and planning (moto answers in another process)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    found = choose_partitions(store, payload("plan", partitions, partitions, 1))
    list_wall, list_cpu = time.perf_counter() - wall, time.thread_time() - cpu
    wall, cpu = time.perf_counter(), time.thread_time()
    planned = plan(payload("plan", partitions, world_size, 1000), found, job_id="bench", function_timeout_s=900,
                   max_world_size=config.CoordinatorSettings.max_world_size, rendezvous=None)
    plan_wall, plan_cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert len(planned.events) == world_size
    return {"list_wall_s": list_wall, "list_cpu_s": list_cpu, "plan_wall_s": plan_wall, "plan_cpu_s": plan_cpu}


def listing_clients() -> dict[str, S3Store]:
    """The S3 clients planning is timed with, old to new: a plain boto3 client (this benchmark's
    until 2026-11-30: ``LastModified`` parsed into datetimes), the coordinator's with botocore's
    listing parser (timestamps as text), and the coordinator's (:mod:`services.s3listing`)."""
    return {"plain boto3": S3Store(boto3.client("s3", region_name="us-east-1")),
            "botocore's parser": S3Store(s3_client(fast_listing=False)),
            "listing parser": S3Store(s3_client())}


def spread(values: list[float], form: str = "{:.0f}") -> str:
    return "/".join(form.format(v) for v in (min(values), statistics.median(values), max(values)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=10_000, help="ranks of the no-op job (default 10,000)")
    parser.add_argument("--sandboxes", type=int, default=8, help="runtime sandboxes = job concurrency (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of baseline and job (default 3)")
    parser.add_argument("--partitions", type=int, default=10_000, help="partitions to plan (default 10,000)")
    parser.add_argument("--profile", action="store_true", help="sample every thread during the last job")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")]))
    load = os.getloadavg()
    with children_killed_on_exit(), S3Server(log_path=OUT / "coordinator-s3.log") as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        store = S3Store()  # the coordinator's own client (services.s3store.s3_client), as in the service
        store.client.create_bucket(Bucket=BUCKET)
        print(f"seeding {args.partitions} partition objects ...", file=sys.stderr, flush=True)
        seed(store, "rate", 10)
        seed(store, "plan", args.partitions)
        clients = listing_clients()
        heap.settle()  # as the coordinator's process does before it serves (services/coordinator/cli.py)
        plans: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
        for round_ in range(args.rounds):  # interleaved, the order alternating
            for name in (list(clients) if round_ % 2 == 0 else list(reversed(clients))):
                plans[name].append(planning(clients[name], args.partitions, min(args.partitions, args.ranks)))

        proc, endpoint = start_runtime(args.sandboxes, "coordinator-runtime", "noop_handler.succeed")
        requests = job_requests(args.ranks, args.sandboxes)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FANOUT}
        sampler = Sampler() if args.profile else None
        try:
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint
            bare_boto3(endpoint, 50, args.sandboxes)  # warm every connection and sandbox
            for round_ in range(args.rounds):  # interleaved, the order alternating, so drift hits all
                print(f"round {round_ + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                profiled = sampler if round_ == args.rounds - 1 else None
                for name in (FANOUT if round_ % 2 == 0 else FANOUT[::-1]):
                    if name.startswith("bare"):
                        with CollectorPauses() as pauses:
                            rate, cpu_ms = bare_boto3(endpoint, args.ranks, args.sandboxes,
                                                      requests if name == FANOUT[1] else None)
                        runs[name].append({"per_s": rate, "cpu_ms_per_rank": cpu_ms, **pauses.figures()})
                    else:
                        runs[name].append(through_coordinator(
                            store, args.ranks, args.sandboxes, f"rate-{round_}-{name.replace(' ', '-')}",
                            profiled if name == FANOUT[-1] else None, **JOB_SETTINGS[name]))
            jobs = runs[FANOUT[-1]]
            last_job = jobs[-1]
            with_ranks = [status_cost(last_job["coordinator"], last_job["job_id"], True) for _ in range(3)]
            without = [status_cost(last_job["coordinator"], last_job["job_id"], False) for _ in range(3)]
        finally:
            proc.stop()
    costs = [serialisation_costs(args.ranks) for _ in range(3)]
    baselines = [run["per_s"] for run in runs[FANOUT[0]]]
    ratios = {name: [run["per_s"] / base for run, base in zip(runs[name], baselines, strict=True)]
              for name in FANOUT}
    print(f"\nload average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at end "
          "{:.1f}/{:.1f}/{:.1f} (2 cores, shared)".format(*os.getloadavg()))
    print(f"planning {args.partitions} partitions, {args.rounds} interleaved rounds per S3 client, min/median/max:")
    for name, timed_runs in plans.items():
        own = [p["list_cpu_s"] + p["plan_cpu_s"] for p in timed_runs]
        print(f"  {name}: the coordinator's own time (CPU) {spread([o * 1e3 for o in own])} ms (target < 1000 ms); "
              f"listing wall {spread([p['list_wall_s'] * 1e3 for p in timed_runs])} ms, "
              f"CPU {spread([p['list_cpu_s'] * 1e3 for p in timed_runs])} ms; "
              f"plan wall {spread([p['plan_wall_s'] * 1e3 for p in timed_runs])} ms, "
              f"CPU {spread([p['plan_cpu_s'] * 1e3 for p in timed_runs])} ms")
    print(f"fan-out, {args.ranks} no-op ranks, {args.sandboxes} sandboxes, {args.rounds} interleaved rounds, "
          "min/median/max:")
    for name in FANOUT:
        print(f"  {name}: {spread([run['per_s'] for run in runs[name]])} /s, ratio {spread(ratios[name], '{:.2f}')}x; "
              f"this process's CPU per rank {spread([run['cpu_ms_per_rank'] for run in runs[name]], '{:.2f}')} ms; "
              + collector_pauses(runs[name]))
    print("  (target: the job >= 0.95x of the first, bare boto3 at the same concurrency)")
    print(f"  whole job (submit to summary written): {spread([j['wall_s'] for j in jobs], '{:.1f}')} s")
    print(f"  summary (its {args.ranks} result reads): {spread([j['summary_s'] for j in jobs], '{:.2f}')} s "
          "(target < 15 s)")
    print(f"  peak RSS of this process: {spread([j['peak_rss_mb'] for j in jobs])} MB (target < 500 MB)")
    print(f"  ranks {[j['states'] for j in jobs]}")
    print(f"status of a {args.ranks}-rank job: with ranks {spread([w[0] * 1e3 for w in with_ranks])} ms, "
          f"{with_ranks[0][1] / 1e6:.1f} MB; ranks=false {spread([w[0] * 1e3 for w in without], '{:.2f}')} ms, "
          f"{without[0][1]} bytes")
    print(f"serialising {args.ranks} items, old form -> new, ms (min/median/max of 3):")
    for old_name, new_name, what in (("status_poll_by_hand_ms", "status_poll_counter_ms", "a status poll's counts"),
                                     ("snapshot_asdict_ms", "snapshot_by_hand_ms", "rank-record snapshots"),
                                     ("records_json_indented_ms", "records_json_compact_ms", "their JSON"),
                                     ("events_asdict_ms", "events_by_field_ms", "manifest events")):
        print(f"  {what}: {spread([c[old_name] for c in costs], '{:.1f}')} -> "
              f"{spread([c[new_name] for c in costs], '{:.1f}')}")
    if sampler is not None:
        print("\nwhere the last job's CPU went (every thread):\n" + sampler.report())
    write_report("coordinator", {
        "plan_partitions": args.partitions, "planning": plans, "ranks": args.ranks, "sandboxes": args.sandboxes,
        "rounds": args.rounds, "load_average": [load, os.getloadavg()], "ratios": ratios,
        "fan_out": {name: [{k: v for k, v in run.items() if k != "coordinator"} for run in runs[name]]
                    for name in FANOUT},
        "status_with_ranks": with_ranks, "status_without_ranks": without, "serialisation": costs})
    return 0 if all(run["states"] == {"succeeded": args.ranks} for name in FANOUT[2:] for run in runs[name]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
