"""Fixtures for the inference worker: a real S3 server (moto's, on loopback) seeded with tiny data."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.common import seed_bucket
from tests.processes import rendezvous_process

if TYPE_CHECKING:
    from services.s3store import S3Store
    from services.worker.model import RedshiftModel


@pytest.fixture(scope="session")
def tiny_model(integration: None) -> RedshiftModel:
    torch = pytest.importorskip("torch")
    from services.worker.model import RedshiftModel

    torch.manual_seed(3)
    return RedshiftModel().eval()


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

    def results(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` but the job's control objects (markers, claims, outcomes) and
        the ranks' progress records."""
        return [key for key in self.keys(prefix) if "/_control/" not in key and "/_progress/" not in key]


@pytest.fixture(scope="session")
def world(s3_endpoint: str, tiny_model: RedshiftModel) -> World:
    from services.s3store import S3Store

    store = S3Store()
    bucket, keys, checkpoint_key = seed_bucket(store, "cosmic-test-", 2, tiny_model)
    return World(store, bucket, keys, checkpoint_key)


@pytest.fixture
def rendezvous(integration: None, tmp_path: Path) -> Iterator[str]:
    """A rendezvous server of this test's own on loopback: its ``host:port``."""
    with rendezvous_process(tmp_path / "rendezvous.log") as endpoint:
        yield endpoint
