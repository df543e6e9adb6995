"""The local Lambda runtime's overhead: warm invoke round trips, invocations per second, cold start.

Why this shape: the runtime stands between boto3 and a handler, so its cost is what an
invocation through it costs beyond calling the handler itself. The baseline, measured in the
same run, is the same no-op handler called directly in this process, with the same payload
encoded and decoded as JSON (what any caller pays anyway). Cold start is the REPORT line's Init
Duration of a fresh sandbox's first invocation (process start to the runtime client's first
``/next``).

Run: ``.venv/bin/python bench/lambda_runtime.py [--n 500] [--seconds 5] [--sandboxes 2] [--cold 5]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import threading
import time
from typing import Any

import boto3
from _harness import BENCH, OUT, REPO, children_killed_on_exit, spawn, write_report
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from noop_handler import handler

from services.local.processes import Child, python
from services.ports import free_port

PAYLOAD = {"job": "bench", "rank": 3, "partitions": ["100MB/1.pt", "100MB/2.pt"]}


def start_runtime(sandboxes: int, label: str, handler: str = "noop_handler.handler") -> tuple[Child, str]:
    """The runtime on a free port, ready once a DryRun invoke answers (its sandboxes have started)."""
    port = free_port()
    child = spawn(python("services.local.runtime", "--port", str(port), "--sandboxes", str(sandboxes),
                         "--handler", handler, "--log-level", "WARNING"), OUT / f"{label}.stderr.log")
    endpoint = f"http://127.0.0.1:{port}"
    lam = client(endpoint)

    def answers() -> bool:
        try:
            lam.invoke(FunctionName="function", InvocationType="DryRun", Payload=b"{}")
        except (BotoCoreError, ClientError):  # not listening yet: the sandboxes are still starting
            return False
        return True

    return child.wait_ready(answers, 60), endpoint


def client(endpoint: str) -> Any:
    return boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=Config(retries={"max_attempts": 0}))


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def through_front(endpoint: str, n: int) -> list[float]:
    lam, body = client(endpoint), json.dumps(PAYLOAD)
    for _ in range(20):  # warm: connections, sandboxes, imports
        lam.invoke(FunctionName="cosmic-worker", Payload=body)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = lam.invoke(FunctionName="cosmic-worker", Payload=body)
        json.loads(response["Payload"].read())
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def direct(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        json.loads(json.dumps(handler(json.loads(json.dumps(PAYLOAD)), None)))
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def throughput(endpoint: str, threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop_at = time.monotonic() + seconds

    def hammer(index: int) -> None:
        lam, body = client(endpoint), json.dumps(PAYLOAD)
        while time.monotonic() < stop_at:
            lam.invoke(FunctionName="cosmic-worker", Payload=body)["Payload"].read()
            counts[index] += 1

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    return sum(counts) / seconds


def direct_throughput(seconds: float) -> float:
    count, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        json.loads(json.dumps(handler(json.loads(json.dumps(PAYLOAD)), None)))
        count += 1
    return count / seconds


def cold_starts(runs: int) -> list[float]:
    """Init Duration of a fresh sandbox's first invocation, one fresh runtime per run."""
    inits = []
    for run in range(runs):
        proc, endpoint = start_runtime(1, f"runtime-cold-{run}")
        try:
            response = client(endpoint).invoke(FunctionName="cosmic-worker", Payload=b"{}", LogType="Tail")
            report = base64.b64decode(response["LogResult"]).decode().strip().splitlines()[-1]
            inits.append(float(re.search(r"Init Duration: ([\d.]+) ms", report).group(1)))  # type: ignore[union-attr]
        finally:
            proc.stop()
    return inits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="sequential warm invocations (default 500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window (default 5)")
    parser.add_argument("--sandboxes", type=int, default=2, help="sandboxes, and client threads (default 2)")
    parser.add_argument("--cold", type=int, default=5, help="fresh runtimes for the cold start (default 5)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")])
    with children_killed_on_exit():
        proc, endpoint = start_runtime(args.sandboxes, "runtime-warm")
        try:
            front = percentiles(through_front(endpoint, args.n))
            front_rate = throughput(endpoint, args.sandboxes, args.seconds)
        finally:
            proc.stop()
        inits = cold_starts(args.cold)
    base = percentiles(direct(args.n))
    base_rate = direct_throughput(args.seconds)
    print(f"{'path':<34} {'p50 ms':>9} {'p99 ms':>9} {'per second':>12}")
    print(f"{'boto3 -> runtime -> sandbox':<34} {front['p50']:>9.3f} {front['p99']:>9.3f} {front_rate:>12,.0f}")
    print(f"{'handler called directly (baseline)':<34} {base['p50']:>9.4f} {base['p99']:>9.4f} {base_rate:>12,.0f}")
    print(f"runtime overhead per warm invoke: p50 {front['p50'] - base['p50']:.3f} ms "
          f"({front['p50'] / base['p50']:,.0f}x the direct call); throughput ratio {front_rate / base_rate:.5f}")
    print(f"cold start (Init Duration, {len(inits)} fresh sandboxes): p50 {statistics.median(inits):.1f} ms, "
          f"max {max(inits):.1f} ms")
    write_report("lambda_runtime", {"front_ms": front, "direct_ms": base, "front_per_s": front_rate,
                                    "direct_per_s": base_rate, "cold_init_ms": inits, "sandboxes": args.sandboxes})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
