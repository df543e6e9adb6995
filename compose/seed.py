"""One-shot seeding of LocalStack under compose: the demo data where examples/payload.json looks.

Runs in the worker image (making the demo data needs torch) with ``services.local.seeding.
seed_store``, the embedded stack's own seeding: ``python3 -m services.worker.demo_assets`` makes the
checkpoint and partitions into ``COSMIC_CACHE_DIR``, then they are uploaded to the bucket, made if
missing. Objects already there with the same size are skipped, so a rerun is cheap.
"""

from __future__ import annotations

import json
import os
import sys

from services.local.seeding import seed_store
from services.local.stack import EmbeddedError
from services.s3store import S3Store

BUCKET = os.environ.get("COSMIC_STATE_BUCKET", "cosmicai-data")
SIZES = os.environ.get("COSMIC_SEED_SIZES", "25MB").split()
COUNT = int(os.environ.get("COSMIC_SEED_COUNT", "4"))


def main() -> int:
    try:
        seeded = seed_store(S3Store(), BUCKET, tuple(SIZES), COUNT)  # AWS_ENDPOINT_URL_S3: LocalStack
    except EmbeddedError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 1
    objects = 1 + sum(len(keys) for keys in seeded.partitions.values())
    print(json.dumps({"bucket": seeded.bucket, "objects": objects, "uploaded": seeded.uploaded}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
