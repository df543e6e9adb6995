"""The summary reads only the result objects a listing shows exist (against moto's S3 server): a
rank that wrote nothing costs no request, and what exists is read as before."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
import pytest

from services.coordinator.finish import write_summary
from services.coordinator.manifest import Manifest
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, plan
from services.coordinator.pricing import load_prices
from services.coordinator.state import Attempt, RankRecord
from services.keys import labels_key, predictions_key, result_key
from services.s3store import Blob, S3Store


class CountingStore(S3Store):
    """An S3Store that notes every object it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get(self, bucket: str, key: str) -> Blob:
        self.read.append(key)
        return super().get(bucket, key)

    def get_json(self, bucket: str, key: str) -> Any | None:
        self.read.append(key)
        return super().get_json(bucket, key)


def _npy(values: list[float]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.float32))
    return buffer.getvalue()


@pytest.fixture
def store(s3_endpoint: str) -> CountingStore:
    return CountingStore()


def test_only_results_that_exist_are_read(store: CountingStore) -> None:
    bucket, path = f"reads-{secrets.token_hex(4)}", "results/reads"
    store.ensure_bucket(bucket)
    request = JobRequest(bucket=bucket, file_limit=1, S3_object_name="model", result_path=path, data_bucket=bucket,
                         data_prefix="p", world_size=40, communicator=False, assignment="wrap")
    job_plan = plan(request, [Partition("p/1.pt", 10)], job_id="j-reads", function_timeout_s=900,
                    max_world_size=40, rendezvous=None)
    manifest = Manifest.from_plan("j-reads", request, job_plan, function="f", max_attempts=1)
    written = (3, 17)  # of 40 ranks, all recorded succeeded, only these wrote anything
    for rank in written:
        store.put_json(bucket, result_key(path, rank), {"job_id": "j-reads", "rank": rank, "samples": 2})
        store.put(bucket, predictions_key(path, rank), _npy([0.1, 0.2]))
        store.put(bucket, labels_key(path, rank), _npy([0.1, 0.3]))
    ranks = {rank: RankRecord(rank, "succeeded", [Attempt(1, 1.0, 2.0, "succeeded")]) for rank in range(40)}
    summary = write_summary(store, load_prices(), manifest, ranks).document
    expected = {key for rank in written
                for key in (result_key(path, rank), predictions_key(path, rank), labels_key(path, rank))}
    assert set(store.read) == expected and len(store.read) == len(expected), store.read
    assert summary["samples"] == 4, summary
