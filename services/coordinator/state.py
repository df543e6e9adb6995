"""Job state in S3: the manifest, one record per rank, the locks. S3 holds the truth, not memory.

Layout in the state bucket (``COSMIC_COORDINATOR_STATE_BUCKET``, else the payload's ``bucket``)::

    jobs/{job_id}/manifest.json     the request, the plan (one event per rank), the job's state (:mod:`.manifest`)
    jobs/{job_id}/journal/{t}.json  rank records changed since the previous segment (every attempt
                                    of a rank, with its REPORT figures), one segment per flush
    jobs/{job_id}/ranks.json        every rank's record, compacted from the journal when a job ends
    jobs/active/{hash}.json         one per result path of a running job: a second job gets a 409
    jobs/idempotency/{hash}.json    Idempotency-Key -> job id, so a retried POST finds its job

Rank records are journaled: changes are coalesced and written as one segment every
``JOURNAL_INTERVAL_S``, so a job of thousands of ranks costs a few S3 writes per second instead
of two per rank (a PUT per rank capped the fan-out near S3's per-request latency). A coordinator
killed between flushes loses at most the last interval of record changes, never results: when it
resumes, a rank the journal does not show finished is checked against its result object in S3
before it is run again. The cancel marker the workers check lives in the result bucket
(``jobs/{job_id}/cancel``), beside the data they can read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from services import logs
from services.contracts import TERMINAL_JOB_STATES, AttemptState, RankState
from services.coordinator.manifest import Manifest, read_manifest, write_manifest
from services.s3store import S3Store

#: The job states a job never leaves (the contracts' model, named here for the coordinator's readers).
TERMINAL = TERMINAL_JOB_STATES


def new_job_id() -> str:
    """Sortable by creation time, unguessable: ``j20261125t044500-3f9a1c2e7b``."""
    return time.strftime("j%Y%m%dt%H%M%S", time.gmtime()) + "-" + secrets.token_hex(5)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


#: Seconds between journal flushes: the most record history a kill -9 can lose.
JOURNAL_INTERVAL_S = 0.25


def ranks_key(job_id: str) -> str:
    return f"jobs/{job_id}/ranks.json"


def journal_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/journal/"


def cancel_key(job_id: str) -> str:
    return f"jobs/{job_id}/cancel"


def active_key(result_bucket: str, result_path: str) -> str:
    return f"jobs/active/{_digest(result_bucket + '/' + result_path)}.json"


def idempotency_key(key: str) -> str:
    return f"jobs/idempotency/{_digest(key)}.json"


@dataclass
class Attempt:
    attempt: int
    started_at: float
    ended_at: float | None = None
    state: str = AttemptState.RUNNING
    error: str | None = None
    #: Seconds spent waiting out throttling (429); ``started_at`` is when the call that ran was sent.
    throttled_s: float = 0.0
    #: From Lambda's REPORT line: duration_ms, billed_duration_ms, memory_size_mb, max_memory_used_mb, init_duration_ms.
    report: dict[str, float | None] = field(default_factory=dict)
    #: The worker's answer (WorkerResult) when it succeeded.
    response: dict[str, Any] | None = None


@dataclass
class RankRecord:
    rank: int
    state: str = RankState.PENDING
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankRecord:
        return cls(rank=int(data["rank"]), state=str(data["state"]),
                   attempts=[Attempt(**attempt) for attempt in data.get("attempts", [])])


class JobStore:
    """Reads and writes job documents; knows which bucket holds which job."""

    def __init__(self, store: S3Store, state_bucket: str = "") -> None:
        self.store = store
        self.state_bucket = state_bucket
        self._buckets: dict[str, str] = {}  # job id -> state bucket, learned as jobs are made or found
        self._lock = threading.Lock()

    # -- where ------------------------------------------------------------------------------
    def bucket_for(self, payload_bucket: str) -> str:
        return self.state_bucket or payload_bucket

    def remember(self, job_id: str, bucket: str) -> None:
        with self._lock:
            self._buckets[job_id] = bucket

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
            if self.store.etag(candidate, manifest_key(job_id)) is not None:
                self.remember(job_id, candidate)
                return candidate
        return None

    # -- documents --------------------------------------------------------------------------
    def save_manifest(self, bucket: str, manifest: Manifest) -> Manifest:
        """Write the job's manifest; returns it as written (stamped with ``updated_at``)."""
        written = write_manifest(self.store, bucket, manifest_key(manifest.job_id), manifest)
        self.remember(manifest.job_id, bucket)
        return written

    def manifest(self, job_id: str) -> tuple[str, Manifest] | None:
        """``(bucket, manifest)`` of the job, None when there is no such job; ManifestError when unreadable."""
        bucket = self.locate(job_id)
        if bucket is None:
            return None
        manifest = read_manifest(self.store, bucket, manifest_key(job_id))
        return (bucket, manifest) if manifest is not None else None

    def ranks(self, bucket: str, job_id: str, world_size: int) -> dict[int, RankRecord]:
        """Every rank's record: the compacted file, then the journal's segments in order; ranks never
        written are pending."""
        found: dict[int, RankRecord] = {}
        compacted = self.store.get_json(bucket, ranks_key(job_id))
        documents = list(compacted.get("records", [])) if isinstance(compacted, dict) else []
        for key in sorted(self.store.keys(bucket, journal_prefix(job_id))):
            segment = self.store.get_json(bucket, key)
            if isinstance(segment, dict):
                documents += segment.get("records", [])
        for document in documents:
            record = RankRecord.from_dict(document)
            found[record.rank] = record
        return {rank: found.get(rank, RankRecord(rank)) for rank in range(world_size)}

    def compact(self, bucket: str, job_id: str, ranks: dict[int, RankRecord]) -> None:
        """Replace the journal by one file of every record (what a finished job is read from)."""
        self.store.put_json(bucket, ranks_key(job_id), {"records": [r.to_dict() for r in ranks.values()]})
        for key in list(self.store.keys(bucket, journal_prefix(job_id))):
            self.store.delete(bucket, key)

    def job_ids(self) -> list[tuple[str, str]]:
        """``(bucket, job_id)`` of every job in the candidate buckets, newest first."""
        found: list[tuple[str, str]] = []
        for bucket in self.candidate_buckets():
            for folder in self.store.folders(bucket, "jobs/"):
                job_id = folder[len("jobs/"):].rstrip("/")
                if job_id not in ("active", "idempotency"):
                    found.append((bucket, job_id))
                    self.remember(job_id, bucket)
        return sorted(found, key=lambda item: item[1], reverse=True)

    def active_job_ids(self) -> list[tuple[str, str]]:
        """``(bucket, job_id)`` of the jobs holding a result-path lock: the ones to resume after a restart."""
        found = []
        for bucket in self.candidate_buckets():
            for key in self.store.keys(bucket, "jobs/active/"):
                lock = self.store.get_json(bucket, key)
                if isinstance(lock, dict) and "job_id" in lock:
                    found.append((bucket, str(lock["job_id"])))
                    self.remember(str(lock["job_id"]), bucket)
        return found

    # -- locks ------------------------------------------------------------------------------
    def take_result_path(self, bucket: str, job_id: str, result_bucket: str, result_path: str) -> str | None:
        """Claim the result path for ``job_id``; returns the id of the active job holding it, else None."""
        key = active_key(result_bucket, result_path)
        body = json.dumps({"job_id": job_id, "result": f"s3://{result_bucket}/{result_path}"}).encode()
        for _ in range(3):
            if self.store.put_new(bucket, key, body):
                return None
            holder = self.store.get_json(bucket, key) or {}
            holder_id = str(holder.get("job_id", ""))
            found = self.manifest(holder_id) if holder_id else None
            if found is not None and found[1].state not in TERMINAL:
                return holder_id
            self.store.delete(bucket, key)  # a lock left by a finished or vanished job
        return "unknown"

    def release_result_path(self, bucket: str, job_id: str, result_bucket: str, result_path: str) -> None:
        key = active_key(result_bucket, result_path)
        holder = self.store.get_json(bucket, key)
        if isinstance(holder, dict) and holder.get("job_id") == job_id:
            self.store.delete(bucket, key)

    def idempotent_job(self, bucket: str, key: str, job_id: str) -> str:
        """Record ``key -> job_id`` unless the key already names a job; returns the job the key names."""
        record = idempotency_key(key)
        if self.store.put_new(bucket, record, json.dumps({"job_id": job_id}).encode()):
            return job_id
        existing = self.store.get_json(bucket, record) or {}
        return str(existing.get("job_id", job_id))

    def lookup_idempotent(self, bucket: str, key: str) -> str | None:
        existing = self.store.get_json(bucket, idempotency_key(key))
        return str(existing["job_id"]) if isinstance(existing, dict) and "job_id" in existing else None


class RankJournal:
    """Coalesces rank-record changes of one job into a journal segment per flush, from one thread."""

    def __init__(self, jobs: JobStore, bucket: str, job_id: str, interval_s: float = JOURNAL_INTERVAL_S) -> None:
        self._jobs, self._bucket, self._job_id, self._interval = jobs, bucket, job_id, interval_s
        self._dirty: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=logs.carry(self._loop), name=f"journal-{job_id[-6:]}", daemon=True)
        self._thread.start()

    def record(self, record: RankRecord) -> None:
        """Note the record's current state (a snapshot: later changes need another call)."""
        snapshot = record.to_dict()
        with self._lock:
            self._dirty[record.rank] = snapshot

    def flush(self) -> None:
        with self._lock:
            records, self._dirty = self._dirty, {}
        if not records:
            return
        key = f"{journal_prefix(self._job_id)}{time.time_ns():020d}-{secrets.token_hex(2)}.json"
        try:
            self._jobs.store.put_json(self._bucket, key, {"records": list(records.values())})
        except Exception:
            with self._lock:  # keep them for the next flush, unless a newer snapshot came meanwhile
                for rank, snapshot in records.items():
                    self._dirty.setdefault(rank, snapshot)
            raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception as exc:  # an S3 hiccup: the records stay queued for the next flush
                logging.getLogger("cosmic.coordinator.state").warning("journal flush failed: %s", exc)
