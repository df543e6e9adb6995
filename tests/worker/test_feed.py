"""Partition prefetch: order, depth (memory), and early close, against the real S3 server."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
from services.s3store import Blob, S3Store
from services.worker.feed import PartitionFeed
from tests.common import partition_bytes
from tests.worker.conftest import World


class CountingStore(S3Store):
    """The real store, recording which downloads started, with each download slowed a little."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.started: list[str] = []
        self.delay = delay
        self.lock = threading.Lock()

    def get(self, bucket: str, key: str) -> Blob:
        with self.lock:
            self.started.append(key)
        time.sleep(self.delay)
        return super().get(bucket, key)


@pytest.fixture(scope="module")
def four(world: World) -> list[str]:
    keys = [f"feed/{index}.pt" for index in range(1, 5)]
    for index, key in enumerate(keys, start=1):
        world.store.put(world.bucket, key, partition_bytes(index, samples=4))
    return keys


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_order_and_depth(world: World, four: list[str], ahead: int) -> None:
    store = CountingStore(delay=0.05)
    seen = []
    with PartitionFeed(store, world.bucket, four, ahead=ahead) as feed:
        for fetched in feed:
            time.sleep(0.2)  # "inference": long enough for every allowed prefetch to start
            started = len(store.started)
            seen.append(fetched.key)
            assert started <= len(seen) + ahead, f"{started} downloads started with {len(seen)} consumed"
            assert started == min(len(four), len(seen) + ahead), "prefetch keeps the pipeline full"
            assert len(fetched.partition) == 4 and fetched.size_bytes > 0
    assert seen == four


def test_close_stops_fetching(world: World, four: list[str]) -> None:
    store = CountingStore(delay=0.05)
    with PartitionFeed(store, world.bucket, four, ahead=1) as feed:
        next(iter(feed))
    time.sleep(0.2)
    assert len(store.started) <= 2
