"""Deadlines for many connections with one constant timeout, without a timer per connection.

Connections that share a timeout expire in the order they were added, so they can be kept in
buckets of ``granularity`` seconds: adding and forgetting are set operations, and one periodic
sweep drops every item of every bucket whose time has come. Unlike a timer per connection,
nothing is allocated per item and forgotten items are freed at once. Items expire between
``timeout`` and ``timeout + granularity`` seconds after they were added.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ExpiryBuckets(Generic[T]):
    """Items that expire ``timeout`` seconds after they are added, unless forgotten first."""

    def __init__(self, timeout: float, granularity: float) -> None:
        self.timeout = timeout
        self.granularity = granularity
        self._buckets: deque[tuple[float, set[T]]] = deque()

    def add(self, item: T, now: float) -> set[T]:
        """Track ``item``; returns its bucket, which the caller keeps to forget it cheaply."""
        expires = math.ceil((now + self.timeout) / self.granularity) * self.granularity
        if not self._buckets or self._buckets[-1][0] < expires:
            self._buckets.append((expires, set()))
        bucket = self._buckets[-1][1]
        bucket.add(item)
        return bucket

    def pop_expired(self, now: float) -> Iterator[T]:
        """Remove and yield every item whose deadline is at or before ``now``."""
        while self._buckets and self._buckets[0][0] <= now:
            _, bucket = self._buckets.popleft()
            while bucket:
                yield bucket.pop()

    def drain(self) -> Iterator[T]:
        """Remove and yield every item, expired or not (used at shutdown)."""
        while self._buckets:
            _, bucket = self._buckets.popleft()
            while bucket:
                yield bucket.pop()

    def __len__(self) -> int:
        return sum(len(bucket) for _, bucket in self._buckets)
