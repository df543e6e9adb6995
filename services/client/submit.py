"""``cosmic submit payload.json``: start a job, follow it with a progress line, print its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import handles_errors, load_payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("payload", type=Path, help="the job payload (JSON), e.g. examples/payload.json")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="follow the job to its end and print its report (default: wait)")
    parser.add_argument("--idempotency-key", default=None, type=argtypes.idempotency_key,
                        help="the same key returns the same job instead of starting a second one")


@handles_errors("submit")
def run(args: argparse.Namespace) -> int:
    """Print the job id at once (scripts keep it), then, unless --no-wait, wait and report; 1 if it failed."""
    client = ApiClient()
    answer = client.submit(load_payload(args.payload), args.idempotency_key)
    job_id = answer["job_id"]
    print(job_id if answer.get("created", True) else f"{job_id} (already submitted with this idempotency key)")
    if not args.wait:
        return 0
    status = client.wait(job_id)
    if status.get("summary_key"):
        print(client.report(job_id, "md"))
    if status["state"] != "succeeded":
        print(f"cosmic submit: job {job_id} {status['state']}: {status.get('error') or 'see `cosmic status`'}",
              file=sys.stderr)
        return 1
    return 0
