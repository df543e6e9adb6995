"""``cosmic logs JOB_ID RANK``: the log tail of a rank's invocation, as Lambda returned it.

Lambda hands back the last 4 KB of an invocation's log with its answer (``LogType=Tail``); the
coordinator keeps it on the attempt, so this works without CloudWatch access. The full log is in
CloudWatch on AWS (the group the tail's lines name), or in the local runtime's log on this machine.
"""

from __future__ import annotations

import argparse
from typing import Any

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import handles_errors
from services.client.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=argtypes.job_id, help="the job (`cosmic status` lists them)")
    parser.add_argument("rank", type=argtypes.rank, help="the rank, from 0")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--attempt", type=argtypes.positive, default=None,
                       help="this attempt's tail (default: the latest attempt's)")
    which.add_argument("--all", action="store_true", help="every attempt's tail, oldest first")


@handles_errors("logs")
def run(args: argparse.Namespace) -> int:
    answer = ApiClient().logs(args.job_id, args.rank)
    attempts = answer.get("attempts") or []
    if not attempts:
        print(f"job {args.job_id} rank {args.rank}: {answer.get('state', 'pending')}, no attempt yet")
        return 0
    if args.all:
        chosen = attempts
    elif args.attempt is not None:
        chosen = [a for a in attempts if a["attempt"] == args.attempt]
        if not chosen:
            raise CommandError(f"rank {args.rank} of job {args.job_id} has attempts 1 to {len(attempts)}, "
                               f"not {args.attempt}")
    else:
        chosen = attempts[-1:]
    print("\n".join(describe_attempt(args.job_id, args.rank, attempt) for attempt in chosen))
    return 0


def describe_attempt(job_id: str, rank: int, attempt: dict[str, Any]) -> str:
    """A heading for the attempt, then its tail (or why there is none)."""
    heading = f"== job {job_id} rank {rank} attempt {attempt['attempt']}: {attempt['state']}"
    if attempt.get("error"):
        heading += f" ({attempt['error']})"
    tail = attempt.get("log_tail")
    if tail:
        return f"{heading}\n{tail.rstrip()}"
    why = ("still running: Lambda returns the tail with its answer" if attempt["state"] in ("running", "throttled")
           else "no log tail was returned (an attempt lost in transport, or recorded by an older coordinator)")
    return f"{heading}\n({why})"
