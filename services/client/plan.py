"""``cosmic plan``: which Lambda memory size and world size for a dataset, by a deadline or a budget.

Asks the coordinator's planner (``POST /plans``): for each memory size and world size it predicts the
seed-style row (duration, wall time, cost, $ per million samples) from a calibration measured on the
embedded stack, marks the cheapest configuration that meets the deadline (or the fastest within the
budget) and lists its assumptions.
"""

from __future__ import annotations

import argparse
import json

from services.client.api import ApiClient
from services.client.commands import handles_errors
from services.client.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition-mb", type=float, required=True,
                        help="size of one partition, MB (the seed's: 25, 50, 75 or 100)")
    parser.add_argument("--partitions", type=int, required=True, help="how many partitions the dataset has")
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--deadline", type=float, metavar="SECONDS", help="the job must end within this")
    goal.add_argument("--budget", type=float, metavar="USD", help="the job must cost at most this")
    parser.add_argument("--memory-mb", type=int, nargs="+", default=None,
                        help="Lambda memory sizes to try, 128..10240 (default 884 1769 3538 5307 10240)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=None,
                        help="world sizes to try (default powers of 2 up to --partitions, and --partitions)")
    parser.add_argument("--architecture", choices=["x86_64", "arm64"], default="x86_64")
    parser.add_argument("--format", choices=["md", "json"], default="md", help="what to print (default md)")


@handles_errors("plan")
def run(args: argparse.Namespace) -> int:
    if args.partition_mb <= 0 or args.partitions < 1:
        raise CommandError("--partition-mb must be above 0 and --partitions at least 1")
    body = {"partition_mb": args.partition_mb, "partitions": args.partitions, "architecture": args.architecture,
            **({"deadline_s": args.deadline} if args.deadline is not None else {"budget_usd": args.budget}),
            **({"memory_mb": args.memory_mb} if args.memory_mb else {}),
            **({"world_sizes": args.world_sizes} if args.world_sizes else {})}
    answer = ApiClient().plan(body, args.format)
    print(json.dumps(answer, indent=2) if args.format == "json" else answer.rstrip("\n"))
    return 0
