"""Fixtures for the inference worker: a real S3 server (moto's, on loopback) seeded with tiny data."""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rendezvous.conftest import start_server  # noqa: F401 (a fixture the worker's tests use too)

torch = pytest.importorskip("torch")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from services.s3store import S3Store  # noqa: E402
from services.worker.data import save_partition  # noqa: E402
from services.worker.model import RedshiftModel  # noqa: E402
from services.worker.synthetic import partition  # noqa: E402

SAMPLES = 48  # per tiny partition: enough for batch edges, small enough for a fast CPU forward


@pytest.fixture(scope="session")
def tiny_model() -> RedshiftModel:
    torch.manual_seed(3)
    return RedshiftModel().eval()


def partition_bytes(index: int, samples: int = SAMPLES, suffix: str = ".pt", labels: bool = True) -> bytes:
    data = partition(index, samples)
    if not labels:
        data = type(data)(data.images, data.magnitudes, None)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"cosmic-test-{secrets.token_hex(4)}{suffix}"
    try:
        save_partition(data, path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


@dataclass
class World:
    """One bucket seeded with tiny partitions and the model folder the legacy payload names."""

    store: S3Store
    bucket: str
    partitions: list[str]
    checkpoint_key: str

    def event(self, **fields: Any) -> dict[str, Any]:
        base = {"version": 1, "job_id": "job-" + secrets.token_hex(3), "rank": 0, "world_size": 1,
                "data_bucket": self.bucket, "partitions": self.partitions, "result_bucket": self.bucket,
                "result_path": "results/" + secrets.token_hex(3), "batch_size": 32,
                "checkpoint": {"bucket": self.bucket, "key": self.checkpoint_key}}
        return {**base, **fields}

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.store.keys(self.bucket, prefix))


def seed_bucket(store: S3Store, name_prefix: str, count: int, model: RedshiftModel) -> tuple[str, list[str], str]:
    """A fresh bucket with ``count`` tiny partitions at ``tiny/{i}.pt`` and ``model``'s checkpoint in
    the legacy model folder: ``(bucket, partition keys, checkpoint key)``."""
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


@pytest.fixture(scope="session")
def world(s3_endpoint: str, tiny_model: RedshiftModel) -> World:
    store = S3Store()
    bucket, keys, checkpoint_key = seed_bucket(store, "cosmic-test-", 2, tiny_model)
    return World(store, bucket, keys, checkpoint_key)
