"""Partitions fetched ahead: the next partition downloads while the current one is inferred.

One background thread downloads and parses partitions in order, ``ahead`` partitions beyond the
one being consumed (so at most ``ahead + 1`` partitions are in memory). The first download starts
when the feed is created, before the model loads, so a cold start overlaps the two. The thread
works with the log keys of the invocation that created the feed (:func:`services.logs.carry`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from services.logs import carry
from services.s3store import S3Store
from services.worker.data import Partition, load_partition


@dataclass(frozen=True)
class Fetched:
    key: str
    partition: Partition
    size_bytes: int
    download_s: float
    parse_s: float


class PartitionFeed:
    """Iterate ``(key, partition)`` in order, prefetching; close it to stop fetching early."""

    def __init__(self, store: S3Store, bucket: str, keys: list[str], ahead: int = 1) -> None:
        self._store, self._bucket, self._keys = store, bucket, list(keys)
        self._ahead = max(0, ahead)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="partition-feed")
        self._pending: deque[Future[Fetched]] = deque()
        self._next = 0
        self.waited_s = 0.0  # time the consumer spent waiting for a download: what overlap did not hide
        self._fill(self._ahead + 1)

    def _fetch(self, key: str) -> Fetched:
        started = time.perf_counter()
        blob = self._store.get(self._bucket, key)
        downloaded = time.perf_counter()
        partition = load_partition(blob.data, key)
        return Fetched(key, partition, len(blob.data), downloaded - started, time.perf_counter() - downloaded)

    def _fill(self, depth: int) -> None:
        """Queue downloads until ``depth`` are pending (the consumer holds one more, being inferred)."""
        while self._next < len(self._keys) and len(self._pending) < depth:
            self._pending.append(self._pool.submit(carry(self._fetch), self._keys[self._next]))
            self._next += 1

    def __iter__(self) -> Iterator[Fetched]:
        while True:
            if not self._pending:
                self._fill(1)  # nothing fetched ahead (ahead=0): fetch the next one now
            if not self._pending:
                return
            future = self._pending.popleft()
            started = time.perf_counter()
            fetched = future.result()
            self.waited_s += time.perf_counter() - started
            self._fill(self._ahead)
            yield fetched

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PartitionFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
