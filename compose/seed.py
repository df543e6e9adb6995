"""One-shot seeding of LocalStack under compose: the demo data where examples/payload.json looks.

Runs in the worker image (making the demo data needs torch) with ``services.local.seeding.
seed_store``, the embedded stack's own seeding: ``python3 -m services.worker.demo_assets`` makes the
checkpoint and partitions into ``COSMIC_CACHE_DIR``, then they are uploaded to the bucket, made if
missing. Objects already there with the same size are skipped, so a rerun is cheap.
"""

# no ``from __future__ import annotations``: the tests load this file without registering it as a
# module, and a dataclass can only resolve string annotations (ClassVar) through its module

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from services import envconfig
from services.local.seeding import seed_store
from services.local.stack import EmbeddedError
from services.s3store import S3Store


@dataclass(frozen=True)
class SeedSettings:
    """What the init step seeds: ``COSMIC_SEED_<FIELD>``."""

    ENV_PREFIX: ClassVar[str] = "COSMIC_SEED_"
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {"bucket": "COSMIC_STATE_BUCKET"}

    #: The bucket examples/payload.json reads (made if missing).
    bucket: str = "cosmicai-data"
    #: Partition sizes, separated by spaces.
    sizes: str = "25MB"
    #: Partitions of each size.
    count: int = 4


SETTINGS = envconfig.load(SeedSettings)
BUCKET, SIZES, COUNT = SETTINGS.bucket, SETTINGS.sizes.split(), SETTINGS.count


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
