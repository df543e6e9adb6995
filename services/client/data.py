"""``cosmic data generate|upload|ls``: make partitions in the legacy layout, put them in S3, see what is there.

::

    cosmic data generate --size 100MB --count 8          # data/100MB/1.pt .. 8.pt (seeded)
    cosmic data upload data/100MB --prefix 100MB          # s3://cosmicai-data/100MB/1.pt ..
    cosmic data ls [100MB]

Upload and ls go to S3 with your own credentials (boto3's usual chain; ``AWS_ENDPOINT_URL_S3``
for a local S3), or to the embedded stack's S3 with ``--embedded``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services import argtypes
from services.client import datasets
from services.client.commands import handles_errors
from services.client.errors import DataStoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser("generate", help="make seeded partitions in the legacy layout ({i}.pt from 1)")
    make.add_argument("--size", required=True, choices=datasets.SIZES, help="partition size (samples as the seed's)")
    make.add_argument("--count", type=argtypes.positive, required=True, help="how many partitions, from 1.pt")
    make.add_argument("--out", type=Path, default=Path("data"),
                      help="the files go into OUT/SIZE/ (default data/); existing ones are kept")
    send = actions.add_parser("upload", help="upload a folder's partitions to a prefix")
    send.add_argument("folder", type=Path, help="a folder of {i}.pt (or .npz, .safetensors) files")
    send.add_argument("--prefix", type=argtypes.prefix, required=True, help="the payload's data_prefix, e.g. 100MB")
    show = actions.add_parser("ls", help="the partitions under a prefix, or under every top-level prefix")
    show.add_argument("prefix", nargs="?", type=argtypes.prefix, default=None, help="a prefix, e.g. 100MB")
    for sub in (send, show):
        sub.add_argument("--bucket", type=argtypes.bucket, default=datasets.DEFAULT_BUCKET,
                         help=f"the payload's data_bucket (default {datasets.DEFAULT_BUCKET})")
        sub.add_argument("--embedded", action="store_true",
                         help="the embedded stack's S3 (`cosmic serve --embedded`), not your AWS credentials'")


@handles_errors("data")
def run(args: argparse.Namespace) -> int:
    from services.s3store import NO_CREDENTIALS, StoreError

    try:
        return _run(args)
    except StoreError as exc:
        if exc.unanswered:
            hint = " (is the endpoint right? AWS_ENDPOINT_URL_S3, or --embedded)"
        elif exc.code == NO_CREDENTIALS and not getattr(args, "embedded", False):
            hint = " (for the embedded stack of `cosmic serve --embedded`, add --embedded)"
        else:
            hint = ""
        raise DataStoreError(f"{exc}{hint}", bucket=exc.bucket, key=exc.key) from None


def _run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        paths = datasets.generate(args.size, args.count, args.out / args.size)
        print(f"{len(paths)} partitions in {args.out / args.size}/; next: "
              f"cosmic data upload {args.out / args.size} --prefix {args.size} (with --embedded for the embedded "
              "stack of `cosmic serve --embedded`)")
        return 0
    s3 = datasets.store(args.embedded)
    if args.action == "upload":
        keys, sent = datasets.upload(s3, args.bucket, args.folder, args.prefix)
        print(f"s3://{args.bucket}/{args.prefix}/: {len(keys)} partitions ({sent} uploaded, "
              f"{len(keys) - sent} already there); a payload reads them with "
              f'"data_bucket": "{args.bucket}", "data_prefix": "{args.prefix}"')
        return 0
    print(datasets.listing(s3, args.bucket, args.prefix))
    return 0
