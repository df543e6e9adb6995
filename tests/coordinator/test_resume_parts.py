"""The parts a restarted coordinator leans on, against moto's S3 server: the journal has an attempt
in S3 before it is sent, and an orphan's word settles it (or its silence, by the rules)."""

from __future__ import annotations

import json
import secrets
import threading
import time

import pytest

from services.contracts import AttemptState, WorkerEvent
from services.coordinator.journal import RankJournal
from services.coordinator.orphans import await_word
from services.coordinator.speculation import stragglers
from services.coordinator.state import Attempt, JobStore, RankRecord, journal_prefix
from services.keys import outcome_key, progress_key, result_key
from services.s3store import S3Store


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[S3Store, str]:
    store = S3Store()
    name = f"resume-{secrets.token_hex(4)}"
    store.ensure_bucket(name)
    return store, name


def _event(bucket: str) -> WorkerEvent:
    return WorkerEvent(job_id="j1", rank=3, world_size=4, data_bucket=bucket, partitions=("p/1.pt",),
                       result_bucket=bucket, result_path="out")


def test_a_waited_change_is_in_s3_when_the_wait_returns_and_waiters_share_a_segment(bucket) -> None:
    store, name = bucket
    journal = RankJournal(JobStore(store, name), name, "j1", interval_s=30.0)  # no timed flush in this test
    try:
        records = [RankRecord(rank, attempts=[Attempt(1, time.time())]) for rank in range(8)]
        changes = [journal.record(record) for record in records]
        threads = [threading.Thread(target=journal.wait_written, args=(change,)) for change in changes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads)
        segments = list(store.keys(name, journal_prefix("j1")))
        assert 1 <= len(segments) <= 2, "the waiters' changes share a segment"
        written = {r["rank"] for key in segments for r in store.get_json(name, key)["records"]}
        assert written == set(range(8))
    finally:
        journal.close()


def test_an_orphans_result_settles_it_with_the_workers_own_figures(bucket) -> None:
    store, name = bucket
    event = _event(name)
    store.put_json(name, result_key("out", 3), {"job_id": "j1", "attempt": 1, "status": "succeeded",
                                                "runtime": {"elapsed_s": 2.5, "memory_size_mb": 2048}})
    word = await_word(store, event, 1, time.time(), time.time() + 5, start_grace_s=5)
    assert word.state == AttemptState.SUCCEEDED
    assert word.report["duration_ms"] == 2500 and word.report["memory_size_mb"] == 2048


def test_an_orphan_that_ended_otherwise_says_so_in_its_outcome(bucket) -> None:
    store, name = bucket
    event = _event(name)
    store.put(name, outcome_key("out", "j1", 3, 2), json.dumps(
        {"job_id": "j1", "attempt": 2, "status": "failed", "error": "boom", "elapsed_s": 1.0}).encode())
    word = await_word(store, event, 2, time.time(), time.time() + 5, start_grace_s=5)
    assert (word.state, word.error) == (AttemptState.FAILED, "boom")


def test_an_orphan_that_never_started_is_lost_after_the_grace_not_the_deadline(bucket) -> None:
    store, name = bucket
    began = time.monotonic()
    word = await_word(store, _event(name), 1, time.time(), time.time() + 60, start_grace_s=1.0, poll_s=0.1)
    assert word.state == AttemptState.LOST and "never said it started" in str(word.error)
    assert time.monotonic() - began < 5


def test_a_running_orphan_is_awaited_to_its_deadline(bucket) -> None:
    """Its progress record says it started (and an older attempt's record would not)."""
    store, name = bucket
    store.put_json(name, progress_key("out", "j1", 3), {"job_id": "j1", "rank": 3, "attempt": 1, "phase": "inferring"})
    began = time.monotonic()
    word = await_word(store, _event(name), 1, time.time(), time.time() + 2.0, start_grace_s=0.5, poll_s=0.1)
    assert word.state == AttemptState.LOST and "deadline" in str(word.error)
    assert time.monotonic() - began >= 1.9


def test_stragglers_are_ranks_slower_than_the_multiple_of_the_median() -> None:
    now = 1000.0

    def done(rank: int, seconds: float) -> RankRecord:
        return RankRecord(rank, "succeeded", [Attempt(1, now - 50, now - 50 + seconds, "succeeded")])

    def running(rank: int, for_s: float, speculative: bool = False) -> RankRecord:
        attempts = [Attempt(1, now - for_s)]
        if speculative:
            attempts.append(Attempt(2, now - 1, speculative=True))
        return RankRecord(rank, "running", attempts)

    records = [done(0, 10), done(1, 12), done(2, 11), running(3, 30), running(4, 20), running(5, 40, True)]
    assert stragglers(records, 2.0, now) == [3], "over 22 s, and not already backed up"
    assert stragglers(records[:1] + records[3:], 2.0, now) == [], "one finished rank of six is no median"
