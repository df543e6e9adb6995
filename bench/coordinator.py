"""The coordinator's own costs at scale: planning, fan-out, the summary, its memory and status.

1. Planning: listing and planning ``--partitions`` partitions (10,000 by default) against the S3
   server. The wall time is mostly moto's server (a child process); the coordinator's own time is
   the planning thread's CPU time (``time.thread_time``), which must stay under a second.
2. Fan-out, in ``--rounds`` interleaved rounds: one job of ``--ranks`` ranks (no communicator)
   through the coordinator's service (planning, every attempt in S3 before it is sent, our
   retries) against the local Lambda runtime running a no-op handler, against the baseline: the
   same count of bare boto3 invocations at the same concurrency (one thread per sandbox), so the
   ratio is what the coordinator adds, not parallelism. Also per job: its wall time, the summary's
   wall time (its result reads), this process's CPU per rank, and its peak RSS (sampled
   ``VmRSS``; moto and the runtime are children, so this process is the coordinator).
3. Status: ``Coordinator.status`` of the last job, with and without its per-rank list, time and
   JSON size.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from _harness import BENCH, OUT, REPO, children_killed_on_exit, write_report
from _sampler import Sampler, Ticking, timed
from lambda_runtime import client, start_runtime

from services.contracts import WorkerEvent
from services.coordinator import config
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, choose_partitions, plan
from services.coordinator.service import Coordinator
from services.coordinator.state import TERMINAL, Attempt, RankRecord
from services.local.s3server import S3Server
from services.s3store import S3Store

BUCKET = "cosmic-bench-coordinator"


def payload(prefix: str, partitions: int, world_size: int, concurrency: int, result: str = "") -> JobRequest:
    return JobRequest(bucket=BUCKET, file_limit=partitions, S3_object_name="model",
                      result_path=f"bench/{result or prefix}", data_bucket=BUCKET, data_prefix=prefix,
                      world_size=world_size, max_concurrency=concurrency, communicator=False,
                      assignment="wrap" if world_size > partitions else "contiguous")


def bare_boto3(endpoint: str, count: int, threads: int = 1) -> float:
    """Invocations per second of ``count`` bare boto3 invokes from ``threads`` threads at once."""
    lam = client(endpoint)

    def invoke(rank: int) -> None:
        lam.invoke(FunctionName="cosmic-worker", Payload=b'{"rank": %d}' % rank)["Payload"].read()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(invoke, range(count)))
    return count / (time.perf_counter() - started)


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
                        sampler: Sampler | None = None) -> dict[str, Any]:
    """One job: its fan-out rate (first start to last end), wall, summary seconds, CPU per rank, peak RSS."""
    coordinator = Coordinator(config.load(max_concurrency_limit=sandboxes, invoke_retries=12), store)
    summary_s: list[float] = []
    coordinator._finish = timed(summary_s, coordinator._finish)  # type: ignore[method-assign]
    cpu = time.process_time()
    started = time.perf_counter()
    with PeakRss() as rss, (sampler or contextlib.nullcontext()):
        job_id, _, _ = coordinator.submit(payload("rate", 10, ranks, sandboxes, result=label))
        while coordinator.status(job_id, ranks=False)["state"] not in TERMINAL:
            time.sleep(0.05)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    status = coordinator.status(job_id)
    attempts = [a for rank in status["ranks"] for a in rank["attempts"]]
    span = max(a["ended_at"] for a in attempts) - min(a["started_at"] for a in attempts)
    return {"per_s": len(attempts) / span, "wall_s": wall, "summary_s": summary_s[0] if summary_s else None,
            "cpu_ms_per_rank": cpu * 1e3 / ranks, "peak_rss_mb": rss.peak, "states": status["ranks_by_state"],
            "coordinator": coordinator, "job_id": job_id}


def status_cost(coordinator: Coordinator, job_id: str, ranks: bool) -> tuple[float, int]:
    """Seconds to build and encode the job's status, and its JSON size in bytes."""
    started = time.perf_counter()
    body = json.dumps(coordinator.status(job_id, ranks=ranks)).encode()
    return time.perf_counter() - started, len(body)


def serialisation_costs(count: int) -> dict[str, float]:
    """Milliseconds per ``count`` items of what each serialisation change replaced, old form and new,
    in this run: rank-record snapshots, their JSON, and the manifest's events."""
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

    snapshots = [record.to_dict() for record in records]
    return {"snapshot_asdict_ms": ms(lambda: [dataclasses.asdict(r) for r in records]),
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
        store = S3Store(boto3.client("s3", region_name="us-east-1"))
        store.client.create_bucket(Bucket=BUCKET)
        print(f"seeding {args.partitions} partition objects ...", file=sys.stderr, flush=True)
        seed(store, "rate", 10)
        seed(store, "plan", args.partitions)
        plans = [planning(store, args.partitions, min(args.partitions, args.ranks)) for _ in range(3)]

        proc, endpoint = start_runtime(args.sandboxes, "coordinator-runtime", "noop_handler.succeed")
        baselines: list[float] = []
        jobs: list[dict[str, Any]] = []
        sampler = Sampler() if args.profile else None
        try:
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint
            bare_boto3(endpoint, 50, args.sandboxes)  # warm every connection and sandbox
            for round_ in range(args.rounds):  # interleaved, the order alternating, so drift hits both
                print(f"round {round_ + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                profiled = sampler if round_ == args.rounds - 1 else None
                for is_baseline in ([True, False] if round_ % 2 == 0 else [False, True]):
                    if is_baseline:
                        baselines.append(bare_boto3(endpoint, args.ranks, args.sandboxes))
                    else:
                        jobs.append(through_coordinator(store, args.ranks, args.sandboxes, f"rate-{round_}", profiled))
            last_job = jobs[-1]
            with_ranks = [status_cost(last_job["coordinator"], last_job["job_id"], True) for _ in range(3)]
            without = [status_cost(last_job["coordinator"], last_job["job_id"], False) for _ in range(3)]
        finally:
            proc.stop()
    costs = [serialisation_costs(args.ranks) for _ in range(3)]
    ratios = [job["per_s"] / base for job, base in zip(jobs, baselines, strict=True)]
    print(f"\nload average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at end "
          "{:.1f}/{:.1f}/{:.1f} (2 cores, shared)".format(*os.getloadavg()))
    print(f"planning {args.partitions} partitions, 3 runs, min/median/max:")
    print(f"  listing wall {spread([p['list_wall_s'] * 1e3 for p in plans])} ms, "
          f"coordinator CPU {spread([p['list_cpu_s'] * 1e3 for p in plans])} ms")
    print(f"  plan wall {spread([p['plan_wall_s'] * 1e3 for p in plans])} ms, "
          f"CPU {spread([p['plan_cpu_s'] * 1e3 for p in plans])} ms")
    own = [p["list_cpu_s"] + p["plan_cpu_s"] for p in plans]
    print(f"  the coordinator's own time (CPU): {spread([o * 1e3 for o in own])} ms (target < 1000 ms)")
    print(f"fan-out, {args.ranks} no-op ranks, {args.sandboxes} sandboxes, {args.rounds} interleaved rounds, "
          "min/median/max:")
    print(f"  bare boto3, {args.sandboxes} threads (baseline): {spread(baselines)} /s")
    print(f"  coordinator job:                  {spread([j['per_s'] for j in jobs])} /s  "
          f"ratio {spread(ratios, '{:.2f}')}x (target >= 0.95x)")
    print(f"  whole job (submit to summary written): {spread([j['wall_s'] for j in jobs], '{:.1f}')} s")
    print(f"  summary (its {args.ranks} result reads): {spread([j['summary_s'] for j in jobs], '{:.2f}')} s "
          "(target < 15 s)")
    print(f"  coordinator CPU per rank: {spread([j['cpu_ms_per_rank'] for j in jobs], '{:.2f}')} ms")
    print(f"  peak RSS of this process: {spread([j['peak_rss_mb'] for j in jobs])} MB (target < 500 MB)")
    print(f"  ranks {[j['states'] for j in jobs]}")
    print(f"status of a {args.ranks}-rank job: with ranks {spread([w[0] * 1e3 for w in with_ranks])} ms, "
          f"{with_ranks[0][1] / 1e6:.1f} MB; ranks=false {spread([w[0] * 1e3 for w in without], '{:.2f}')} ms, "
          f"{without[0][1]} bytes")
    print(f"serialising {args.ranks} items, old form -> new, ms (min/median/max of 3):")
    for old_name, new_name, what in (("snapshot_asdict_ms", "snapshot_by_hand_ms", "rank-record snapshots"),
                                     ("records_json_indented_ms", "records_json_compact_ms", "their JSON"),
                                     ("events_asdict_ms", "events_by_field_ms", "manifest events")):
        print(f"  {what}: {spread([c[old_name] for c in costs])} -> {spread([c[new_name] for c in costs])}")
    if sampler is not None:
        print("\nwhere the last job's CPU went (every thread):\n" + sampler.report())
    write_report("coordinator", {
        "plan_partitions": args.partitions, "planning": plans, "ranks": args.ranks, "sandboxes": args.sandboxes,
        "rounds": args.rounds, "bare_boto3_per_s": baselines, "load_average": [load, os.getloadavg()],
        "jobs": [{k: v for k, v in job.items() if k not in ("coordinator",)} for job in jobs], "ratios": ratios,
        "status_with_ranks": with_ranks, "status_without_ranks": without, "serialisation": costs})
    return 0 if all(job["states"] == {"succeeded": args.ranks} for job in jobs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
