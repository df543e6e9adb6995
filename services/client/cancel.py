"""``cosmic cancel JOB_ID``: stop a job; with ``--wait``, until every rank has stopped."""

from __future__ import annotations

import argparse

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import handles_errors
from services.client.status import describe_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=argtypes.job_id, help="the job to cancel")
    parser.add_argument("--wait", action="store_true",
                        help="wait until the job is cancelled (its running ranks stop within about a second)")


@handles_errors("cancel")
def run(args: argparse.Namespace) -> int:
    client = ApiClient()
    status = client.cancel(args.job_id)
    if args.wait:
        status = client.wait(args.job_id, progress=False)
    print(describe_job(status))
    return 0
