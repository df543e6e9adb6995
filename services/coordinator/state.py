"""Job state in S3: the manifest, one record per rank, the locks. S3 holds the truth, not memory.

Layout in the state bucket (``COSMIC_COORDINATOR_STATE_BUCKET``, else the payload's ``bucket``),
all under the reserved prefix ``.cosmic/`` that no payload may name (:data:`.payload.RESERVED_PREFIX`,
a 422): a result path there could otherwise write over the coordinator's own objects::

    .cosmic/jobs/{job_id}/manifest.json     the request, the plan (one event per rank), the job's state
    .cosmic/jobs/{job_id}/journal/{t}.json  rank records changed since the previous segment (every attempt
                                            of a rank, with its REPORT figures), one segment per flush
    .cosmic/jobs/{job_id}/ranks.json        every rank's record, compacted from the journal when a job ends
    .cosmic/active/{hash}.json              one per result path of a running job: a second job gets a 409
    .cosmic/idempotency/{hash}.json         Idempotency-Key -> job id, so a retried POST finds its job

Coordinators before this layout wrote the same objects under ``jobs/`` (``jobs/{job_id}/...``,
``jobs/active/``, ``jobs/idempotency/``), where payloads could write too. Those are still read, so
a restarted coordinator resumes, lists and reports the jobs an older one left, and keeps writing
such a job where it started; new jobs are written under ``.cosmic/`` only. Every object read while
resuming or listing is read defensively: one that is not what it should be (a result written
under the old prefix, a document that is not JSON) is skipped and logged, and a job whose
manifest cannot be read is listed with that error, never a crash.

Rank records are journaled: changes are coalesced and written as one segment every
``JOURNAL_INTERVAL_S``, so a job of thousands of ranks costs a few S3 writes per second instead
of two per rank (a PUT per rank capped the fan-out near S3's per-request latency). A coordinator
killed between flushes loses at most the last interval of record changes, never results: when it
resumes, a rank the journal does not show finished is checked against its result object in S3
before it is run again. The cancel and abort markers the workers check live under the job's
result path instead (:mod:`.control`), the one place the worker role may read on AWS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.contracts import TERMINAL_JOB_STATES, AttemptState, RankState
from services.coordinator.errors import ManifestError
from services.coordinator.manifest import Manifest, read_manifest, write_manifest
from services.coordinator.payload import RESERVED_PREFIX
from services.logs import event as log_event
from services.s3store import S3Store

#: The job states a job never leaves (the contracts' model, named here for the coordinator's readers).
TERMINAL = TERMINAL_JOB_STATES
log = logging.getLogger("cosmic.coordinator.state")

#: Where jobs' folders, result-path locks and idempotency records are (the reserved prefix) ...
JOBS, ACTIVE, IDEMPOTENCY = f"{RESERVED_PREFIX}/jobs/", f"{RESERVED_PREFIX}/active/", f"{RESERVED_PREFIX}/idempotency/"
#: ... and where coordinators before it put them: still read, for the jobs they left.
LEGACY_JOBS, LEGACY_ACTIVE, LEGACY_IDEMPOTENCY = "jobs/", "jobs/active/", "jobs/idempotency/"


def new_job_id() -> str:
    """Sortable by creation time, unguessable: ``j20261125t044500-3f9a1c2e7b``."""
    return time.strftime("j%Y%m%dt%H%M%S", time.gmtime()) + "-" + secrets.token_hex(5)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def manifest_key(job_id: str, jobs: str = JOBS) -> str:
    """The job's manifest; ``jobs`` is the folder of jobs (:data:`LEGACY_JOBS` for an older coordinator's)."""
    return f"{jobs}{job_id}/manifest.json"


def ranks_key(job_id: str, jobs: str = JOBS) -> str:
    return f"{jobs}{job_id}/ranks.json"


def journal_prefix(job_id: str, jobs: str = JOBS) -> str:
    return f"{jobs}{job_id}/journal/"


def active_key(result_bucket: str, result_path: str, folder: str = ACTIVE) -> str:
    return f"{folder}{_digest(result_bucket + '/' + result_path)}.json"


def idempotency_key(key: str, folder: str = IDEMPOTENCY) -> str:
    return f"{folder}{_digest(key)}.json"


@dataclass
class Attempt:
    attempt: int
    started_at: float
    ended_at: float | None = None
    state: str = AttemptState.RUNNING
    error: str | None = None
    #: Seconds spent waiting out throttling (429); ``started_at`` is when the call that ran was sent.
    throttled_s: float = 0.0
    #: From Lambda's REPORT line: duration_ms, billed_duration_ms, memory_size_mb, max_memory_used_mb, init_duration_ms;
    #: from the local runtime's, also cpu_vcpus and cpu_enforced_by (the CPU the sandbox had).
    report: dict[str, float | str | None] = field(default_factory=dict)
    #: The worker's answer (WorkerResult) when it succeeded.
    response: dict[str, Any] | None = None
    #: A backup of a slow rank (the payload's ``speculate``), run beside the rank's attempt.
    speculative: bool = False
    #: Where ``report`` comes from: ``lambda`` (its REPORT line) or ``worker`` (the worker's own
    #: elapsed time and configured memory, for an attempt whose answer a killed coordinator missed).
    report_source: str = "lambda"
    #: The invocation's log tail as Lambda returned it (at most 4 KB), for ``cosmic logs JOB RANK``.
    log_tail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The attempt as JSON-ready data, what ``dataclasses.asdict`` gives, ~20x faster: a journal
        snapshot is taken at every attempt's start and end, 20,000 of them for 10,000 ranks. The
        ``report`` and ``response`` dicts are copied (shallow: both are replaced whole, never edited)."""
        return {"attempt": self.attempt, "started_at": self.started_at, "ended_at": self.ended_at,
                "state": self.state, "error": self.error, "throttled_s": self.throttled_s,
                "report": dict(self.report),
                "response": dict(self.response) if self.response is not None else None,
                "speculative": self.speculative, "report_source": self.report_source, "log_tail": self.log_tail}


@dataclass
class RankRecord:
    rank: int
    state: str = RankState.PENDING
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A snapshot of the record (:meth:`Attempt.to_dict`), the same as ``dataclasses.asdict``."""
        return {"rank": self.rank, "state": self.state, "attempts": [attempt.to_dict() for attempt in self.attempts]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankRecord:
        return cls(rank=int(data["rank"]), state=str(data["state"]),
                   attempts=[Attempt(**attempt) for attempt in data.get("attempts", [])])


class JobStore:
    """Reads and writes job documents; knows which bucket (and which layout) holds which job."""

    def __init__(self, store: S3Store, state_bucket: str = "") -> None:
        self.store = store
        self.state_bucket = state_bucket
        self._buckets: dict[str, str] = {}  # job id -> state bucket, learned as jobs are made or found
        self._folders: dict[str, str] = {}  # job id -> its folder of jobs, when not JOBS (an older coordinator's)
        #: job id -> what could not be read of it (skipped), for the job's status to show
        self.unreadable: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def view(self, store: S3Store) -> JobStore:
        """The same jobs through another store (one that retries, for the job threads), sharing what is known."""
        other = JobStore(store, self.state_bucket)
        other._buckets, other._folders, other.unreadable, other._lock = (
            self._buckets, self._folders, self.unreadable, self._lock)
        return other

    # -- where ------------------------------------------------------------------------------
    def bucket_for(self, payload_bucket: str) -> str:
        return self.state_bucket or payload_bucket

    def remember(self, job_id: str, bucket: str, folder: str | None = None) -> None:
        with self._lock:
            self._buckets[job_id] = bucket
            if folder is not None:
                self._folders[job_id] = folder

    def folder(self, job_id: str) -> str:
        """The job's folder of jobs: :data:`JOBS`, or :data:`LEGACY_JOBS` for a job an older coordinator made."""
        with self._lock:
            return self._folders.get(job_id, JOBS)

    def candidate_buckets(self) -> list[str]:
        """Where jobs may be: the configured state bucket, else every bucket jobs were seen in or that exists."""
        if self.state_bucket:
            return [self.state_bucket]
        with self._lock:
            known = list(dict.fromkeys(self._buckets.values()))
        try:
            listed = [b["Name"] for b in self.store.client.list_buckets().get("Buckets", [])]
        except Exception:  # no s3:ListAllMyBuckets: the known ones must do
            listed = []
        return list(dict.fromkeys(known + listed))

    def locate(self, job_id: str) -> str | None:
        with self._lock:
            bucket = self._buckets.get(job_id)
        if bucket is not None:
            return bucket
        for candidate in self.candidate_buckets():
            for folder in (JOBS, LEGACY_JOBS):
                if self.store.etag(candidate, manifest_key(job_id, folder)) is not None:
                    self.remember(job_id, candidate, folder)
                    return candidate
        return None

    def _skip(self, bucket: str, key: str, exc: Exception, job_id: str | None = None) -> None:
        """Log an object that cannot be read, and note it on its job when it has one."""
        log_event(log, "state_unreadable", logging.ERROR, bucket=bucket, key=key, job_id=job_id, error=str(exc))
        if job_id is not None:
            with self._lock:
                notes = self.unreadable.setdefault(job_id, [])
                if str(exc) not in notes:
                    notes.append(str(exc))

    def _document(self, bucket: str, key: str, job_id: str | None = None) -> Any | None:
        """The JSON at ``key``, None when absent or unreadable (skipped, logged); S3 not answering is raised."""
        return self.store.readable_json(bucket, key, lambda exc: self._skip(bucket, key, exc, job_id))

    # -- documents --------------------------------------------------------------------------
    def save_manifest(self, bucket: str, manifest: Manifest) -> Manifest:
        """Write the job's manifest; returns it as written (stamped with ``updated_at``)."""
        folder = self.folder(manifest.job_id)
        written = write_manifest(self.store, bucket, manifest_key(manifest.job_id, folder), manifest)
        self.remember(manifest.job_id, bucket, folder)
        return written

    def manifest(self, job_id: str) -> tuple[str, Manifest] | None:
        """``(bucket, manifest)`` of the job, None when there is no such job; ManifestError when unreadable."""
        bucket = self.locate(job_id)
        if bucket is None:
            return None
        manifest = read_manifest(self.store, bucket, manifest_key(job_id, self.folder(job_id)))
        return (bucket, manifest) if manifest is not None else None

    def ranks(self, bucket: str, job_id: str, world_size: int) -> dict[int, RankRecord]:
        """Every rank's record: the compacted file, then the journal's segments in order; ranks never
        written are pending. An unreadable segment or record is skipped and noted on the job."""
        folder = self.folder(job_id)
        found: dict[int, RankRecord] = {}
        compacted = self._document(bucket, ranks_key(job_id, folder), job_id)
        documents = list(compacted.get("records", [])) if isinstance(compacted, dict) else []
        for key in sorted(self.store.keys(bucket, journal_prefix(job_id, folder))):
            segment = self._document(bucket, key, job_id)
            if isinstance(segment, dict):
                documents += segment.get("records", [])
        for document in documents:
            try:
                record = RankRecord.from_dict(document)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self._skip(bucket, journal_prefix(job_id, folder), ValueError(f"a rank record: {exc!r}"), job_id)
                continue
            found[record.rank] = record
        return {rank: found.get(rank, RankRecord(rank)) for rank in range(world_size)}

    def compact(self, bucket: str, job_id: str, ranks: dict[int, RankRecord]) -> None:
        """Replace the journal by one file of every record (what a finished job is read from)."""
        folder = self.folder(job_id)
        self.store.put_json(bucket, ranks_key(job_id, folder), {"records": [r.to_dict() for r in ranks.values()]},
                            indent=None)  # compact: indenting 10,000 records took 5x the time
        self.store.delete_many(bucket, list(self.store.keys(bucket, journal_prefix(job_id, folder))))

    def job_ids(self) -> list[tuple[str, str]]:
        """``(bucket, job_id)`` of every job in the candidate buckets, newest first (old layout too)."""
        found: dict[str, tuple[str, str]] = {}
        for bucket in self.candidate_buckets():
            for folder in (LEGACY_JOBS, JOBS):  # a job in both: the new layout wins
                for sub in self.store.folders(bucket, folder):
                    job_id = sub[len(folder):].rstrip("/")
                    if folder == LEGACY_JOBS and sub in (LEGACY_ACTIVE, LEGACY_IDEMPOTENCY):
                        continue
                    found[job_id] = (bucket, job_id)
                    self.remember(job_id, bucket, folder)
        return sorted(found.values(), key=lambda item: item[1], reverse=True)

    def active_job_ids(self) -> list[tuple[str, str]]:
        """``(bucket, job_id)`` of the jobs holding a result-path lock: the ones to resume after a restart.

        Only ``{hash}.json`` objects directly under the locks' folders are locks; under the old
        ``jobs/active/`` a payload could write anything (a result path ``jobs/active`` did), so
        whatever is not a lock is skipped and logged, never fatal."""
        found = []
        for bucket in self.candidate_buckets():
            for folder in (ACTIVE, LEGACY_ACTIVE):
                for key in self.store.keys(bucket, folder):
                    name = key[len(folder):]
                    if "/" in name or not name.endswith(".json"):
                        self._skip(bucket, key, ValueError("not a result-path lock"))
                        continue
                    lock = self._document(bucket, key)
                    if isinstance(lock, dict) and isinstance(lock.get("job_id"), str) and "result" in lock:
                        found.append((bucket, lock["job_id"]))
                    else:
                        self._skip(bucket, key, ValueError("not a result-path lock"))
        return found

    # -- locks ------------------------------------------------------------------------------
    def take_result_path(self, bucket: str, job_id: str, result_bucket: str, result_path: str) -> str | None:
        """Claim the result path for ``job_id``; returns the id of the active job holding it, else None."""
        legacy = self._holder(bucket, active_key(result_bucket, result_path, LEGACY_ACTIVE))
        if legacy is not None and legacy != job_id:  # a job an older coordinator started, resumed here
            return legacy
        key = active_key(result_bucket, result_path)
        body = json.dumps({"job_id": job_id, "result": f"s3://{result_bucket}/{result_path}"}).encode()
        for _ in range(3):
            if self.store.put_new(bucket, key, body):
                return None
            holder = self._holder(bucket, key)
            if holder is not None:
                return holder
            self.store.delete(bucket, key)  # a lock left by a finished or vanished job
        return "unknown"

    def _holder(self, bucket: str, key: str) -> str | None:
        """The job holding the lock at ``key``, if it is still active."""
        holder = self._document(bucket, key) or {}
        holder_id = str(holder.get("job_id", "")) if isinstance(holder, dict) else ""
        try:
            found = self.manifest(holder_id) if holder_id else None
        except ManifestError:
            return holder_id  # cannot tell whether it ended: keep the lock
        return holder_id if found is not None and found[1].state not in TERMINAL else None

    def release_result_path(self, bucket: str, job_id: str, result_bucket: str, result_path: str) -> None:
        for folder in (ACTIVE, LEGACY_ACTIVE):
            key = active_key(result_bucket, result_path, folder)
            holder = self._document(bucket, key)
            if isinstance(holder, dict) and holder.get("job_id") == job_id:
                self.store.delete(bucket, key)

    def idempotent_job(self, bucket: str, key: str, job_id: str) -> str:
        """Record ``key -> job_id`` unless the key already names a job; returns the job the key names."""
        record = idempotency_key(key)
        if self.store.put_new(bucket, record, json.dumps({"job_id": job_id}).encode()):
            return job_id
        existing = self._document(bucket, record) or {}
        return str(existing.get("job_id", job_id)) if isinstance(existing, dict) else job_id

    def forget_idempotent(self, bucket: str, key: str) -> None:
        """Drop the key's record (it names a job that was never written)."""
        self.store.delete(bucket, idempotency_key(key))

    def lookup_idempotent(self, bucket: str, key: str) -> str | None:
        for folder in (IDEMPOTENCY, LEGACY_IDEMPOTENCY):
            existing = self._document(bucket, idempotency_key(key, folder))
            if isinstance(existing, dict) and "job_id" in existing:
                return str(existing["job_id"])
        return None
