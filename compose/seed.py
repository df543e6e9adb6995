"""One-shot seeding of LocalStack under compose: the demo data where examples/payload.json looks.

Runs in the worker image (making the demo data needs torch): ``python3 -m services.worker.demo_assets``
makes the checkpoint and partitions into ``COSMIC_CACHE_DIR``, then this uploads them to the
``cosmicai-data`` bucket, creating it, with the same keys as ``services.coordinator.embedded.seed``.
Objects already there with the same size are skipped, so a rerun is cheap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

BUCKET = os.environ.get("COSMIC_STATE_BUCKET", "cosmicai-data")
MODEL_FOLDER = "Anomaly Detection"  # embedded.MODEL_FOLDER
SIZES = os.environ.get("COSMIC_SEED_SIZES", "25MB").split()
COUNT = int(os.environ.get("COSMIC_SEED_COUNT", "4"))
ASSETS_TIMEOUT = 1800.0


def main() -> int:
    command = [sys.executable, "-m", "services.worker.demo_assets", "--sizes", *SIZES, "--count", str(COUNT), "--json"]
    done = subprocess.run(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          timeout=ASSETS_TIMEOUT, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        print(f"seed: making the demo data failed (exit {done.returncode}): {' '.join(command)}", file=sys.stderr)
        return 1
    assets = json.loads(lines[-1])
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL_S3 points it at LocalStack
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)
    checkpoint = Path(assets["checkpoint"])
    uploads = [(checkpoint, f"{MODEL_FOLDER}/Fine_Tune_Model/{checkpoint.name}")]
    for size, paths in assets["partitions"].items():
        uploads += [(Path(path), f"{size}/{Path(path).name}") for path in paths]
    uploaded = 0
    for path, key in uploads:
        try:
            present = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            present = None
        if present != path.stat().st_size:
            s3.upload_file(str(path), BUCKET, key)
            uploaded += 1
    print(json.dumps({"bucket": BUCKET, "objects": len(uploads), "uploaded": uploaded}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
