"""``cosmic sweep``: one job per partition size and world size, and the seed table users made by hand.

With the legacy sizes (``--partition-mb 25 50 75 100``) the table is printed beside the seed's own
rows, cited as theirs, with what differs and why (:mod:`services.client.seedtable`), and plotted.
``--generate`` first makes and uploads the partitions a prefix lacks (seeded, legacy layout),
straight to S3 as ``cosmic data`` does; the jobs themselves go through the coordinator's API.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import EXAMPLE_PAYLOAD, SweepResult, handles_errors, load_payload, sweep
from services.client.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition-mb", type=argtypes.positive, nargs="+", default=[25],
                        help="partition sizes: each job reads the prefix {mb}MB/ (default 25)")
    parser.add_argument("--world-size", type=argtypes.positive, nargs="+", default=[1, 2, 4],
                        help="world sizes (default 1 2 4)")
    parser.add_argument("--payload", type=Path, default=EXAMPLE_PAYLOAD,
                        help="the base payload (default examples/payload.json)")
    parser.add_argument("--file-limit", type=argtypes.positive, default=None,
                        help="partitions per job (default: every partition under the prefix)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where the table and plot go (results/)")
    parser.add_argument("--generate", action="store_true",
                        help="first make and upload the partitions a prefix lacks: --file-limit of them, or as "
                             "many as the largest world size (seeded, legacy layout; cached)")
    parser.add_argument("--embedded", action="store_true",
                        help="with --generate: upload to the embedded stack's S3, not with your AWS credentials")


@handles_errors("sweep")
def run(args: argparse.Namespace) -> int:
    base = load_payload(args.payload)
    if args.generate:
        _generate(args, str(base.get("data_bucket") or ""))
    result = sweep(ApiClient(), base, args.partition_mb, args.world_size, args.out, file_limit=args.file_limit)
    if result.table:
        print()
        print(result.table)
        _seed_comparison(result, args.out)
    for path in result.paths:
        print(path)
    failed = [cell for cell in result.cells if cell.state != "succeeded" or cell.summary is None]
    for cell in failed:
        print(f"cosmic sweep: {cell.partition_mb}MB on {cell.world_size} ranks: job {cell.job_id or '-'} "
              f"{cell.state}: {cell.error or 'no report'}", file=sys.stderr)
    return 1 if failed else 0


def _generate(args: argparse.Namespace, bucket: str) -> None:
    """Fill each ``{mb}MB/`` prefix up to the count the jobs will read."""
    from services.client import datasets
    from services.client.errors import DataStoreError
    from services.s3store import StoreError

    if not bucket:
        raise CommandError(f"{args.payload} names no data_bucket to generate into")
    unknown = [mb for mb in args.partition_mb if f"{mb}MB" not in datasets.SIZES]
    if unknown:
        raise CommandError(f"--generate makes only {', '.join(datasets.SIZES)}, not "
                           f"{', '.join(f'{mb}MB' for mb in unknown)}")
    count = args.file_limit or max(args.world_size)
    try:
        s3 = datasets.store(args.embedded)
        for mb in args.partition_mb:
            sent = datasets.ensure(s3, bucket, f"{mb}MB", count)
            print(f"s3://{bucket}/{mb}MB/: {count} partitions ready ({sent} uploaded now)")
    except StoreError as exc:
        raise DataStoreError(str(exc), bucket=exc.bucket, key=exc.key) from None


def _seed_comparison(result: SweepResult, out: Path) -> None:
    """With any of the seed's sizes: our rows beside theirs (md), and the per-partition plot."""
    from services.client import seedtable
    from services.coordinator.plots import seed_comparison, to_png

    ours, theirs = seedtable.comparison_rows(result.rows)
    if not theirs:
        return
    text = seedtable.render(result.rows)
    print("\nBeside the seed's own table:\n")
    print(text)
    table, plot = out / "seed_comparison.md", out / "seed_comparison.png"
    table.write_text(text)
    plot.write_bytes(to_png(seed_comparison(ours, theirs)))
    result.paths += [table, plot]
