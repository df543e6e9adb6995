"""Bucketed deadlines: expire in order, forget cheaply, never early."""

from __future__ import annotations

from services.rendezvous.expiry import ExpiryBuckets


def test_items_expire_after_their_timeout_and_not_before() -> None:
    buckets: ExpiryBuckets[str] = ExpiryBuckets(timeout=5.0, granularity=1.0)
    buckets.add("a", now=0.0)
    buckets.add("b", now=0.5)
    buckets.add("c", now=3.2)
    assert list(buckets.pop_expired(4.9)) == []
    assert sorted(buckets.pop_expired(5.0)) == ["a"]
    assert sorted(buckets.pop_expired(6.0)) == ["b"]
    assert len(buckets) == 1
    assert sorted(buckets.pop_expired(9.0)) == ["c"]
    assert len(buckets) == 0


def test_forgotten_items_never_expire() -> None:
    buckets: ExpiryBuckets[str] = ExpiryBuckets(timeout=1.0, granularity=0.5)
    bucket = buckets.add("kept", now=0.0)
    buckets.add("dropped", now=0.1)
    bucket.discard("kept")
    assert list(buckets.pop_expired(10.0)) == ["dropped"]


def test_drain_takes_everything() -> None:
    buckets: ExpiryBuckets[int] = ExpiryBuckets(timeout=100.0, granularity=1.0)
    for index in range(10):
        buckets.add(index, now=float(index))
    assert sorted(buckets.drain()) == list(range(10))
    assert len(buckets) == 0
