"""``cosmic retry JOB_ID``: re-run only the failed ranks of a failed job; with ``--wait``, to its end."""

from __future__ import annotations

import argparse

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import handles_errors
from services.client.status import describe_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=argtypes.job_id, help="a failed job (its succeeded ranks are kept)")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end with a progress line")


@handles_errors("retry")
def run(args: argparse.Namespace) -> int:
    """0 when the retry was accepted (or, with --wait, when the job then succeeded); 1 otherwise."""
    client = ApiClient()
    status = client.retry(args.job_id)
    if args.wait:
        status = client.wait(args.job_id)
    print(describe_job(status))
    return 0 if not args.wait or status["state"] == "succeeded" else 1
