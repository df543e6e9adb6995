"""``cosmic sweep``: one job per partition size and world size, and the seed table users made by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.client.api import ApiClient
from services.client.commands import EXAMPLE_PAYLOAD, handles_errors, load_payload, sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition-mb", type=int, nargs="+", default=[25],
                        help="partition sizes: each job reads the prefix {mb}MB/ (default 25)")
    parser.add_argument("--world-size", type=int, nargs="+", default=[1, 2, 4], help="world sizes (default 1 2 4)")
    parser.add_argument("--payload", type=Path, default=EXAMPLE_PAYLOAD,
                        help="the base payload (default examples/payload.json)")
    parser.add_argument("--file-limit", type=int, default=None,
                        help="partitions per job (default: every partition under the prefix)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where the table and plot go (results/)")


@handles_errors("sweep")
def run(args: argparse.Namespace) -> int:
    if min(args.world_size) < 1 or min(args.partition_mb) < 1 or (args.file_limit is not None and args.file_limit < 1):
        print("cosmic sweep: sizes, world sizes and --file-limit must be at least 1", file=sys.stderr)
        return 2
    result = sweep(ApiClient(), load_payload(args.payload), args.partition_mb, args.world_size, args.out,
                   file_limit=args.file_limit)
    if result.table:
        print()
        print(result.table)
    for path in result.paths:
        print(path)
    failed = [cell for cell in result.cells if cell.state != "succeeded" or cell.summary is None]
    for cell in failed:
        print(f"cosmic sweep: {cell.partition_mb}MB on {cell.world_size} ranks: job {cell.job_id or '-'} "
              f"{cell.state}: {cell.error or 'no report'}", file=sys.stderr)
    return 1 if failed else 0
