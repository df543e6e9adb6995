"""The ranks' live progress as ``GET /jobs/{id}`` shows it: each rank's phase and samples, the job's
rate and ETA, read from the records the workers write (:mod:`services.worker.progress`).

Reading is cheap on purpose, since pages and ``cosmic status --follow`` poll: one LIST of the job's
progress prefix at most every :data:`MIN_INTERVAL_S` per job, and a GET only for the records whose
ETag changed since the last look. A record that cannot be read is skipped and logged, never a 500;
S3 not answering leaves the records of the last look (a running job's status still answers from memory).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from services.contracts import RankPhase, RankState
from services.keys import progress_prefix
from services.logs import event as log_event
from services.progress import ProgressError, RankProgress, job_progress, parse_progress
from services.s3store import S3Store, StoreError

log = logging.getLogger("cosmic.coordinator.progress")

#: Seconds between two listings of one job's records, however often it is asked.
MIN_INTERVAL_S = 1.0
#: Jobs whose records are kept between looks (the most recently asked for).
CACHED_JOBS = 64
#: A record larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024


class ProgressReader:
    """The latest record of each rank of a job, re-read only when it changed."""

    def __init__(self, store: S3Store, min_interval: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.min_interval, self.clock = store, min_interval, clock
        # job -> (when last listed: monotonic, wall clock; its records by key with their ETags)
        self._jobs: OrderedDict[str, tuple[float, float, dict[str, tuple[str, RankProgress]]]] = OrderedDict()
        self._lock = threading.Lock()

    def records(self, bucket: str, result_path: str, job_id: str,
                finished_at: float | None = None) -> dict[int, RankProgress]:
        """Each rank's latest record; ``finished_at`` (the job's end, wall clock) forces one more look
        if the last was before it, so a finished job never shows the records of a second before its end."""
        with self._lock:
            looked, looked_wall, known = self._jobs.get(job_id, (float("-inf"), float("-inf"), {}))
        stale = finished_at is not None and looked_wall <= finished_at
        if stale or self.clock() - looked >= self.min_interval:
            wall = time.time()
            try:
                known = self._refresh(bucket, progress_prefix(result_path, job_id), job_id, known)
            except StoreError as exc:  # progress is a view: S3 gone must not take a job's status with it
                log_event(log, "progress_unread", logging.WARNING, job_id=job_id, error=str(exc)[:200])
            with self._lock:
                self._jobs[job_id] = (self.clock(), wall, known)
                self._jobs.move_to_end(job_id)
                while len(self._jobs) > CACHED_JOBS:
                    self._jobs.popitem(last=False)
        return {record.rank: record for _, record in known.values()}

    def _refresh(self, bucket: str, prefix: str, job_id: str,
                 known: dict[str, tuple[str, RankProgress]]) -> dict[str, tuple[str, RankProgress]]:
        fresh: dict[str, tuple[str, RankProgress]] = {}
        for key, etag, size in self.store.objects(bucket, prefix):
            if key in known and known[key][0] == etag:
                fresh[key] = known[key]
                continue
            if size > MAX_RECORD_BYTES:
                log_event(log, "progress_skipped", logging.WARNING, key=key, reason=f"{size} bytes")
                continue
            try:
                record = parse_progress(self.store.get_json(bucket, key))
            except (StoreError, ProgressError) as exc:
                log_event(log, "progress_skipped", logging.WARNING, key=key, reason=str(exc)[:200])
                continue
            if record.job_id == job_id:
                fresh[key] = (etag, record)
        return fresh


def rank_phase(state: str, attempt: int, record: RankProgress | None) -> str | None:
    """The rank's phase: ``queued`` before its first attempt, ``starting`` until its current attempt
    reports, then what the worker says; ``done`` once it succeeded; where it stopped otherwise."""
    current = record if record is not None and record.attempt == attempt else None
    if state == RankState.PENDING:
        return RankPhase.QUEUED
    if state == RankState.SUCCEEDED:
        return RankPhase.DONE
    if state == RankState.RUNNING:
        return current.phase if current is not None else RankPhase.STARTING
    return current.phase if current is not None else None


def annotate(status: dict[str, Any], records: dict[int, RankProgress], partitions_per_rank: dict[int, int],
             now: float | None = None) -> dict[str, Any]:
    """``status`` (a ``GET /jobs/{id}`` document) with each rank's ``phase``, samples and phase
    times, and the job's ``progress`` (samples done and expected, rate, ETA)."""
    for rank in status.get("ranks") or []:  # (None when the caller left the ranks out)
        record = records.get(rank["rank"])
        attempt = rank["attempts"][-1]["attempt"] if rank.get("attempts") else 0
        rank["phase"] = rank_phase(rank["state"], attempt, record)
        rank["samples_done"] = record.samples_done if record is not None else 0
        rank["samples_expected"] = record.samples_expected if record is not None else None
        rank["phases"] = dict(record.phases) if record is not None else {}
        rank["progress_at"] = record.updated_at if record is not None else None
    status["progress"] = job_progress(records.values(), partitions_per_rank, time.time() if now is None else now)
    return status
