"""The coordinator's own costs: how fast it starts invocations, and how fast it plans.

1. Invocations started per second: one job of ``--ranks`` ranks (no communicator) through the
   coordinator's service (planning, S3 state per attempt, our retries) against the local Lambda
   runtime running a no-op handler, against the baseline measured in the same run: the same count
   of bare boto3 invocations at the same concurrency (one thread per sandbox), so the ratio is what
   the coordinator adds, not parallelism; one thread's rate is shown too.
2. Planning: listing and planning ``--partitions`` partitions (10,000 by default) against the S3
   server, which must take under a second.

Run: ``.venv/bin/python bench/coordinator.py [--ranks 1000] [--sandboxes 8] [--partitions 10000]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from _harness import BENCH, OUT, REPO, children_killed_on_exit, write_report
from lambda_runtime import client, start_runtime

from services.coordinator import config
from services.coordinator.payload import JobRequest
from services.coordinator.planning import choose_partitions, plan
from services.coordinator.service import Coordinator
from services.coordinator.state import TERMINAL
from services.local.s3server import S3Server
from services.s3store import S3Store

BUCKET = "cosmic-bench-coordinator"


def payload(prefix: str, partitions: int, world_size: int, concurrency: int) -> JobRequest:
    return JobRequest(bucket=BUCKET, file_limit=partitions, S3_object_name="model", result_path=f"bench/{prefix}",
                      data_bucket=BUCKET, data_prefix=prefix, world_size=world_size, max_concurrency=concurrency,
                      communicator=False, assignment="wrap" if world_size > partitions else "contiguous")


def bare_boto3(endpoint: str, count: int, threads: int = 1) -> float:
    """Invocations per second of ``count`` bare boto3 invokes from ``threads`` threads at once."""
    lam = client(endpoint)

    def invoke(rank: int) -> None:
        lam.invoke(FunctionName="cosmic-worker", Payload=b'{"rank": %d}' % rank)["Payload"].read()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(invoke, range(count)))
    return count / (time.perf_counter() - started)


def through_coordinator(store: S3Store, ranks: int, sandboxes: int) -> tuple[float, float, dict[str, int]]:
    """(invocations per second from the first start to the last end, job wall seconds, rank states)."""
    coordinator = Coordinator(config.load(max_concurrency_limit=sandboxes, invoke_retries=12), store)
    started = time.perf_counter()
    job_id, _, _ = coordinator.submit(payload("rate", 10, ranks, sandboxes))
    while coordinator.status(job_id)["state"] not in TERMINAL:
        time.sleep(0.05)
    wall = time.perf_counter() - started
    status = coordinator.status(job_id)
    attempts = [a for rank in status["ranks"] for a in rank["attempts"]]
    span = max(a["ended_at"] for a in attempts) - min(a["started_at"] for a in attempts)
    return len(attempts) / span, wall, status["ranks_by_state"]


def seed(store: S3Store, prefix: str, count: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(BUCKET, f"{prefix}/{i}.pt", b"x"), range(1, count + 1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=1000, help="ranks of the no-op job (default 1000)")
    parser.add_argument("--sandboxes", type=int, default=8, help="runtime sandboxes = job concurrency (default 8)")
    parser.add_argument("--partitions", type=int, default=10_000, help="partitions to plan (default 10,000)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")]))
    with children_killed_on_exit(), S3Server(log_path=OUT / "coordinator-s3.log") as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        store = S3Store(boto3.client("s3", region_name="us-east-1"))
        store.client.create_bucket(Bucket=BUCKET)
        print(f"seeding {args.partitions} partition objects ...", file=sys.stderr, flush=True)
        seed(store, "rate", 10)
        seed(store, "plan", args.partitions)

        started = time.perf_counter()
        partitions = choose_partitions(store, payload("plan", args.partitions, args.partitions, 1))
        listed = time.perf_counter()
        planned = plan(payload("plan", args.partitions, min(args.partitions, 2048), 2048), partitions, job_id="bench",
                       function_timeout_s=900, max_world_size=2048, rendezvous=None)
        done = time.perf_counter()
        assert len(planned.events) == min(args.partitions, 2048)

        proc, endpoint = start_runtime(args.sandboxes, "coordinator-runtime")
        try:
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint
            bare_boto3(endpoint, 50, args.sandboxes)  # warm every connection and sandbox
            serial = bare_boto3(endpoint, args.ranks)
            baseline = bare_boto3(endpoint, args.ranks, args.sandboxes)
            ours, wall, states = through_coordinator(store, args.ranks, args.sandboxes)
        finally:
            proc.stop()
    plan_s, list_s = done - listed, listed - started
    print(f"\nplanning {args.partitions} partitions: list {list_s * 1e3:.0f} ms + plan {plan_s * 1e3:.0f} ms "
          f"= {(list_s + plan_s) * 1e3:.0f} ms (target < 1000 ms)")
    print(f"invocations started per second, {args.ranks} no-op ranks, {args.sandboxes} sandboxes:")
    print(f"  bare boto3, one thread:                       {serial:8.0f}/s")
    print(f"  bare boto3, {args.sandboxes} threads (baseline):            {baseline:8.0f}/s")
    print(f"  coordinator job, fan-out at {args.sandboxes}:                {ours:8.0f}/s  ({ours / baseline:.2f}x)  "
          f"ranks {states}")
    print(f"  the whole job (submit, fan-out, summary): {wall:.2f} s = {args.ranks / wall:.0f} ranks/s")
    write_report("coordinator", {"plan_partitions": args.partitions, "list_s": list_s, "plan_s": plan_s,
                                 "ranks": args.ranks, "sandboxes": args.sandboxes, "bare_boto3_per_s": baseline,
                                 "bare_boto3_one_thread_per_s": serial,
                                 "coordinator_per_s": ours, "ratio": ours / baseline, "job_wall_s": wall,
                                 "states": states})
    return 0 if states == {"succeeded": args.ranks} else 1


if __name__ == "__main__":
    raise SystemExit(main())
