"""``cosmic demo``: the main job, end to end, on one machine with no Docker and no AWS account.

Every piece is the real one, only the endpoints are local: the embedded stack (moto's S3
server, the local Lambda runtime, the rendezvous server), seeded with the demo partitions and
checkpoint; the coordinator as its own process behind its HTTP API (with a random token); and a
sweep over world sizes through the same client ``cosmic sweep`` uses, each job's ranks linked by
the communicator to agree on a collective summary. It ends with the seed table users made by
hand, and the reports and plots under ``--out``. The coordinator's dashboard is up for the whole
run at the URL it prints (``--keep`` leaves everything up after the sweep, until Ctrl-C), and where
Chromium and selenium are installed it takes screenshots of it. Everything it started is stopped on
the way out.

A stack already running in the cache folder (``cosmic serve --embedded``) is used, not replaced,
and left running; it is resized only when it has too few sandboxes and nothing else uses it. The
demo's coordinator keeps its jobs' state in a bucket of its own (``cosmic-demo-<hex>``, removed at
the end), so that it neither resumes another coordinator's jobs nor an interrupted demo's.

This process never imports torch: the demo data is made by a child process (see
:mod:`services.local.seeding`), and the workers run in the runtime's sandboxes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from services import argtypes
from services.local.processes import Child, ChildError, python, start

#: The partition size the demo data has (the smallest of the legacy study's).
PARTITION_MB = 25
COORDINATOR_START_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world-sizes", type=argtypes.positive, nargs="+", default=[1, 2, 4],
                        help="one job per world size (default 1 2 4)")
    parser.add_argument("--partitions", type=argtypes.positive, default=4,
                        help="25MB partitions each job reads (default 4)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="reports and plots go here (results/)")
    parser.add_argument("--sandboxes", type=argtypes.positive, default=None,
                        help="worker sandboxes: at least the largest world size, as the communicator needs every "
                             "rank at once (default: what a running stack has if enough, else 4 or the largest "
                             "world size)")
    parser.add_argument("--memory-mb", type=int, default=None,
                        help="the sandboxes' configured Lambda memory, 128..10240 MB: it sets each sandbox's CPU share "
                             "as Lambda does (1769 MB: one vCPU; default: what a running stack has, else 10240)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the coordinator, its dashboard and the stack up after the sweep, until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    problem = _check(args, args.sandboxes or max(args.world_sizes))
    if problem:
        print(f"cosmic demo: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    from services.client.api import ApiError
    from services.local.stack import EmbeddedError  # boto3, not torch

    try:
        ok = _demo(args)
    except (EmbeddedError, ApiError) as exc:
        print(f"\ncosmic demo: {exc}", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        print("\ncosmic demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(f"\nresult: {'OK' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def _check(args: argparse.Namespace, sandboxes: int) -> str | None:
    if min(args.world_sizes) < 1 or args.partitions < 1:
        return "world sizes and --partitions must be at least 1"
    if args.memory_mb is not None and not 128 <= args.memory_mb <= 10240:
        return f"--memory-mb must be within 128..10240 (Lambda's sizes), got {args.memory_mb}"
    if sandboxes < max(args.world_sizes):
        return (f"--sandboxes {sandboxes} is below the largest world size {max(args.world_sizes)}: "
                "a job's ranks must all run at once to form the communicator")
    return None


def _demo(args: argparse.Namespace) -> bool:
    from services.client.api import ApiClient
    from services.local.seeding import seed
    from services.local.stack import ensure_stack, release, stack_dir

    print(f"[1/5] the embedded stack: moto's S3 server, the local Lambda runtime, the rendezvous server "
          f"(logs in {stack_dir()})", flush=True)
    stack = ensure_stack(sandboxes=args.sandboxes, at_least=max(args.world_sizes), user="cosmic demo",
                         memory_mb=args.memory_mb)
    coordinator: Child | None = None
    state_bucket = f"cosmic-demo-{secrets.token_hex(4)}"
    try:
        stack.export()
        how = "attached to the running one, left running at the end" if stack.reattached else "started"
        print(f"      {how}: S3 {stack.s3_endpoint}, Lambda {stack.lambda_endpoint} ({stack.sandboxes} sandboxes of "
              f"{stack.memory_mb} MB), "
              f"rendezvous {stack.rendezvous_endpoint}")
        print(f"[2/5] seeding S3 with {args.partitions} partitions of {PARTITION_MB}MB and the demo checkpoint "
              "(the first run makes them: about a minute, once)", flush=True)
        seeded = seed(stack, sizes=(f"{PARTITION_MB}MB",), count=args.partitions)
        print(f"      s3://{seeded.bucket}/{PARTITION_MB}MB/1..{args.partitions}.pt and "
              f"s3://{seeded.bucket}/{seeded.checkpoint_key}")
        token = secrets.token_urlsafe(24)
        _state_bucket(stack, state_bucket, create=True)
        coordinator, url = _start_coordinator(token, state_bucket, stack_dir() / "coordinator.log")
        client = ApiClient(url, token)
        ok = _sweep(client, args)
        _screenshots(url, token, args.out)
        if args.keep:
            _keep(url, token)
        return ok
    finally:
        if coordinator is not None:
            coordinator.stop()
        _state_bucket(stack, state_bucket, create=False)
        if release(stack):
            print(f"      stopped the coordinator and the embedded stack (S3 saved to {stack_dir()})")
        else:
            print("      stopped the coordinator; the embedded stack it did not start (or another command "
                  "uses) is left running: `cosmic stop` stops it")


def _state_bucket(stack: Any, bucket: str, create: bool) -> None:
    """Make the demo's own state bucket, or remove it with what its jobs left there (best effort)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = stack.s3_client()
    try:
        if create:
            client.create_bucket(Bucket=bucket)
            return
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        if create:
            raise
        print(f"      could not remove the demo's state bucket {bucket}: {exc}", file=sys.stderr)
    finally:
        client.close()


def _start_coordinator(token: str, state_bucket: str, log_path: Path) -> tuple[Child, str]:
    """``python -m services.coordinator`` on a free port, with the stack's environment; waits for /healthz."""
    from services.client.api import ApiClient
    from services.local.stack import EmbeddedError
    from services.ports import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"[3/5] starting the coordinator at {url} (a random API token; log {log_path})", flush=True)
    env = {**os.environ, "COSMIC_COORDINATOR_API_TOKEN": token, "COSMIC_COORDINATOR_STATE_BUCKET": state_bucket,
           "PYTHONUNBUFFERED": "1"}
    coordinator = start(python("services.coordinator", "--port", str(port)), name="the coordinator", log=log_path,
                        append=True, env=env)
    client = ApiClient(url, token, timeout=2)
    try:
        coordinator.wait_ready(client.healthy, COORDINATOR_START_TIMEOUT, poll=0.2)
    except ChildError as exc:
        coordinator.stop()
        raise EmbeddedError(str(exc), service="coordinator") from None
    print(f"      dashboard: {url}/#token={token}\n"  # once it answers: the link works from here to the end
          "      (the link signs the browser in once; the token stays in this terminal, not in the server's logs)",
          flush=True)
    return coordinator, url


def _keep(url: str, token: str) -> None:
    """Wait for Ctrl-C with everything up, so the dashboard can be looked at after the sweep."""
    print(f"\n--keep: the dashboard stays up at {url}/#token={token} until Ctrl-C", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\n      Ctrl-C: stopping", flush=True)


def _screenshots(url: str, token: str, out: Path) -> None:
    """The dashboard's pages as PNGs under ``out/screenshots`` where Chromium and selenium are installed."""
    from services.client.errors import BrowserUnavailable
    from services.client.screenshots import take

    try:
        paths = take(url, token, out / "screenshots")
    except BrowserUnavailable as exc:
        print(f"      (no screenshots of the dashboard: {exc})")
        return
    print("      screenshots of the dashboard: " + ", ".join(str(path) for path in paths))


def _sweep(client: Any, args: argparse.Namespace) -> bool:
    from services.client.commands import EXAMPLE_PAYLOAD, load_payload, sweep, write_report_files

    sizes = ", ".join(str(n) for n in args.world_sizes)
    print(f"[4/5] a sweep over world sizes {sizes}: one job each on the {args.partitions} partitions of "
          f"{PARTITION_MB}MB, through the coordinator's API (ranks linked by the communicator)", flush=True)
    result = sweep(client, load_payload(EXAMPLE_PAYLOAD), [PARTITION_MB], args.world_sizes, args.out,
                   file_limit=args.partitions)
    print(f"[5/5] reports and plots under {args.out}/\n")
    if result.table:
        print(result.table.rstrip("\n"))
    agreed = _print_jobs(result.cells)
    largest = max((cell for cell in result.cells if cell.summary), key=lambda cell: cell.world_size, default=None)
    paths = list(result.paths)
    if largest is not None:
        paths += write_report_files(client, str(largest.job_id), args.out, ("predicted_vs_true", "timeline"),
                                    prefix=f"ws{largest.world_size}-")
    print()
    for path in paths:
        print(f"  {path}")
    return result.ok and agreed


def _print_jobs(cells: list[Any]) -> bool:
    """One line per job: its id, samples, wall time and whether the ranks' collective summary agreed."""
    agreed = True
    print()
    for cell in cells:
        summary = cell.summary
        if summary is None:
            print(f"  {_ranks(cell.world_size)}: job {cell.job_id or '-'} {cell.state}: {cell.error or 'no report'}")
            agreed = False
            continue
        collective = summary["collective"]["status"]
        agreed = agreed and collective in ("agreed", "not run")
        print(f"  {_ranks(cell.world_size)}: job {cell.job_id} {cell.state}, {summary['samples']} samples in "
              f"{summary['wall_time_s']:.1f} s; workers' collective summary {collective}")
    return agreed


def _ranks(count: int) -> str:
    return f"{count} rank{'s' if count != 1 else ''}"
