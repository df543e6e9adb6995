"""Paths and helpers the tests of more than one service share; fixtures stay in the conftests.

Test modules and conftests import from here, never from another folder's conftest. Importing this
module needs no optional dependency: what needs torch or boto3 imports it where it is used, so that
a test that needs neither runs without them.
"""

from __future__ import annotations

import functools
import io
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.local.processes import Child
    from services.s3store import S3Store
    from services.worker.model import RedshiftModel

#: The repository's root: the working directory of every child process the tests start.
REPO = Path(__file__).resolve().parents[1]

#: What boto3 needs to talk to moto's server (or the local runtime), which accept any keys.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1"}

#: Samples per tiny partition: enough for batch edges, small enough for a fast CPU forward.
SAMPLES = 48


def wait_for(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    """Return once ``check()`` is true; fail after ``timeout`` seconds, with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready within {timeout} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@functools.cache
def lambda_client(endpoint: str) -> Any:
    """boto3's own Lambda client for the local runtime at ``endpoint``, its retries off (a test sees
    every throttle and error as it happens). One per endpoint, kept: a client made per call and
    dropped leaves its pooled sockets to the garbage collector, whose ResourceWarning then fails
    whichever test happens to be running (the suite turns warnings into errors)."""
    import boto3
    from botocore.config import Config

    return boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local",
                        aws_secret_access_key="local",
                        config=Config(retries={"max_attempts": 0}, read_timeout=30, connect_timeout=5))


def partition_bytes(index: int, samples: int = SAMPLES, suffix: str = ".pt", labels: bool = True) -> bytes:
    """The bytes of synthetic partition ``index`` saved as ``suffix`` (needs torch)."""
    from services.worker.data import save_partition
    from services.worker.synthetic import partition

    data = partition(index, samples)
    if not labels:
        data = type(data)(data.images, data.magnitudes, None)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"cosmic-test-{secrets.token_hex(4)}{suffix}"
    try:
        save_partition(data, path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def seed_bucket(store: S3Store, name_prefix: str, count: int, model: RedshiftModel) -> tuple[str, list[str], str]:
    """A fresh bucket with ``count`` tiny partitions at ``tiny/{i}.pt`` and ``model``'s checkpoint in
    the legacy model folder: ``(bucket, partition keys, checkpoint key)`` (needs torch)."""
    import torch

    bucket = name_prefix + secrets.token_hex(4)
    store.client.create_bucket(Bucket=bucket)
    keys = [f"tiny/{index}.pt" for index in range(1, count + 1)]
    for index, key in enumerate(keys, start=1):
        store.put(bucket, key, partition_bytes(index))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    checkpoint_key = "Anomaly Detection/Fine_Tune_Model/tiny.pt"
    store.put(bucket, checkpoint_key, buffer.getvalue())
    return bucket, keys, checkpoint_key


@dataclass
class Servers:
    """Endpoints of the servers a coordinator needs, and the seeded bucket (the coordinator's and the
    fault matrix's ``stack`` fixtures).

    Not :class:`services.local.stack.Stack`: these are the tests' own servers, sharing the session's
    S3 server and running a test handler around the real worker, started and stopped with the tests."""

    s3: str
    lambda_endpoint: str
    rendezvous: str
    bucket: str
    store: S3Store

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL_LAMBDA": self.lambda_endpoint,
                "COSMIC_RENDEZVOUS_ENDPOINT": self.rendezvous, "COSMIC_STATE_BUCKET": self.bucket,
                "COSMIC_WORKER_TIMEOUT": "120", **extra}

    def payload(self, **fields: Any) -> dict[str, Any]:
        """The users' legacy payload, pointed at the seeded bucket."""
        return {"bucket": self.bucket, "file_limit": "3", "batch_size": 32, "object_type": "folder",
                "S3_object_name": "Anomaly Detection", "script": "/tmp/Anomaly Detection/Inference/inference.py",
                "result_path": f"results/{secrets.token_hex(4)}", "data_bucket": self.bucket, "data_prefix": "tiny",
                **fields}

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.store.keys(self.bucket, prefix))


@dataclass
class Api:
    """A coordinator child process and a small JSON client for it."""

    url: str
    child: Child
    log: Path
    token: str = ""

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, content, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, content, kind = error.code, error.read(), error.headers.get("Content-Type", "")
        return status, (json.loads(content) if "json" in kind else content)

    def submit(self, payload: dict[str, Any], **headers: str) -> str:
        status, body = self.call("POST", "/jobs", payload, headers=headers)
        assert status == 202, body
        return str(body["job_id"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        from services.coordinator.state import TERMINAL

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.call("GET", f"/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in TERMINAL:
                return body
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.child.kill()

    def wait_for_ranks(self, job_id: str, succeeded: int, timeout: float = 60) -> None:
        """Until ``succeeded`` ranks of the job have: a point mid-job to break something at."""
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/jobs/{job_id}")[1]["ranks_by_state"].get("succeeded", 0) < succeeded:
            assert time.monotonic() < deadline, f"job {job_id} did not reach {succeeded} finished ranks"
            time.sleep(0.05)
