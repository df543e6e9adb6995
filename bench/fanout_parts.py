"""The fan-out's rate with one part of the job taken away at a time, against bare boto3 in the same run.

Why: the job's gap to bare boto3 (``bench/coordinator.py``) is the sum of several parts, each a
few percent of the CPU a rank costs on two shared cores, below one round's spread. Taking each away
in turn, rounds interleaved, says which of them the gap is made of. The variants (``--variants``,
the first is the baseline the ratios are taken to):

- ``bare``: bare boto3, 12-byte payloads, as ``bench/coordinator.py``'s baseline;
- ``requests``: bare boto3 sending the job's requests (each rank's event, ``LogType=Tail``);
- ``invoker``: the coordinator's :class:`~services.coordinator.invoker.Invoker` called from plain
  threads with the job's events: the call and the reading of its answer, no job around it;
- ``job``: a coordinator job, as ``bench/coordinator.py`` runs it;
- ``no-journal``: the job with its journal doing nothing (nothing durable: an experiment only);
- ``no-gc``: the job with the garbage collector off while it runs;
- ``unsettled``: the job with the collector as CPython starts it (nothing frozen, young threshold
  700), not as the coordinator's process settles it (:mod:`services.coordinator.heap`), which this
  process does once warmed up, as the service does before it serves, and again after that variant;
- ``declare-N``: the job with ``COSMIC_COORDINATOR_DECLARE_AHEAD`` = N.

The journal is switched off by replacing its methods in this process only, for that variant's job;
nothing is changed for the service.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/fanout_parts.py [--ranks 4000] [--rounds 5]
[--variants bare,requests,invoker,job,no-journal,no-gc,unsettled,declare-32]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _harness import BENCH, OUT, REPO, children_killed_on_exit
from _sampler import CollectorPauses
from coordinator import BUCKET, bare_boto3, collector_pauses, job_requests, seed, spread, through_coordinator
from lambda_runtime import start_runtime

from services.coordinator import heap
from services.coordinator.invoker import Invoker
from services.coordinator.journal import RankJournal
from services.local.s3server import S3Server
from services.s3store import S3Store

SANDBOXES = 8


@contextlib.contextmanager
def without(variant: str) -> Iterator[None]:
    """The part ``variant`` takes away, for the duration of the block."""
    kept = RankJournal.record, RankJournal.flush, RankJournal.wait_written
    if variant == "no-journal":
        RankJournal.record = lambda self, record: 0  # type: ignore[method-assign,assignment]
        RankJournal.flush = lambda self: None  # type: ignore[method-assign]
        RankJournal.wait_written = lambda self, change: None  # type: ignore[method-assign]
    if variant == "no-gc":
        gc.disable()
    if variant == "unsettled":
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        RankJournal.record, RankJournal.flush, RankJournal.wait_written = kept  # type: ignore[method-assign]
        gc.enable()
        if variant == "unsettled":
            heap.settle()


def runs(endpoint: str, store: S3Store, ranks: int) -> dict[str, Callable[[str], float]]:
    """Each kind of variant: its run, returning invocations per second."""
    requests = job_requests(ranks, SANDBOXES)
    events = [json.loads(request) for request in requests]
    invoker = Invoker("cosmic-worker", 900, SANDBOXES)

    def invoker_alone(label: str) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(SANDBOXES) as pool:
            list(pool.map(lambda rank: invoker.invoke(events[rank]), range(ranks)))
        return ranks / (time.perf_counter() - started)

    def job(label: str) -> float:
        ahead = {"declare_ahead": int(label.split("-")[1])} if label.startswith("declare-") else {}
        return float(through_coordinator(store, ranks, SANDBOXES, f"parts-{label}-{time.time_ns()}", **ahead)["per_s"])

    return {"bare": lambda label: bare_boto3(endpoint, ranks, SANDBOXES)[0],
            "requests": lambda label: bare_boto3(endpoint, ranks, SANDBOXES, requests)[0],
            "invoker": invoker_alone, "job": job}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=4000, help="ranks (invocations) per run (default 4,000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--variants", default="bare,requests,invoker,job,no-journal,no-gc,unsettled,declare-32")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")]))
    load = os.getloadavg()
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    pauses: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with children_killed_on_exit(), S3Server(log_path=OUT / "fanout-parts-s3.log") as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        store = S3Store()
        store.client.create_bucket(Bucket=BUCKET)
        seed(store, "rate", 10)
        runtime, endpoint = start_runtime(SANDBOXES, "fanout-parts-runtime", "noop_handler.succeed")
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint
        try:
            kinds = runs(endpoint, store, args.ranks)
            bare_boto3(endpoint, 200, SANDBOXES)  # warm every connection and sandbox
            through_coordinator(store, 300, SANDBOXES, "parts-warm")
            heap.settle()
            for round_ in range(args.rounds):
                for variant in (variants if round_ % 2 == 0 else variants[::-1]):
                    with without(variant), CollectorPauses() as paused:
                        rates[variant].append(kinds.get(variant, kinds["job"])(variant))
                    pauses[variant].append(paused.figures())
                print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{v} {rates[v][-1]:.0f}/s" for v in variants),
                      file=sys.stderr, flush=True)
        finally:
            runtime.stop()
    baseline = rates[variants[0]]
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores, shared)")
    print(f"{args.ranks} no-op ranks, {SANDBOXES} sandboxes, {args.rounds} interleaved rounds, min/median/max:")
    for variant, values in rates.items():
        ratios = [value / base for value, base in zip(values, baseline, strict=True)]
        print(f"  {variant}: {spread(values)}/s, {spread(ratios, '{:.2f}')}x of {variants[0]}; "
              + collector_pauses(pauses[variant]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
