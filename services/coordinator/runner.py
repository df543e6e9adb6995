"""Running a job: fan the ranks out, re-invoke failed ones, record every attempt in S3, then summarise.

One thread per job schedules its ranks on a pool of ``max_concurrency`` threads, each blocking in
a synchronous invocation. Every attempt's start and end is written to the rank's record before
anything else happens, so a coordinator killed at any moment restarts (``resume``) knowing which
ranks finished: those are never run again; a rank caught running is re-invoked with the next
attempt number, and since a rank writes only its own keys the re-run replaces, never duplicates.

Every line the job thread and its rank threads log carries the job's ``job_id`` (and a rank's
``rank``), set once (:func:`services.logs.with_keys`) and carried into the pool's threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from services import logs
from services.contracts import WorkerEvent, result_key
from services.coordinator.control import write_marker
from services.coordinator.finish import ending_state
from services.coordinator.invoker import Invoker
from services.coordinator.manifest import Manifest
from services.coordinator.state import Attempt, JobStore, RankJournal, RankRecord
from services.logs import event as log_event

log = logging.getLogger("cosmic.coordinator.runner")


class JobRunner:
    """Drives one job from its manifest to a terminal state.

    ``manifest`` is the job's current manifest; only this runner replaces it (:meth:`_update`),
    and readers in other threads take it whole, so they never see half a change. ``finish``
    writes the job's summary and returns its ``s3://`` URI.
    """

    def __init__(self, jobs: JobStore, bucket: str, manifest: Manifest, invoker: Invoker,
                 finish: Callable[[str, Manifest, dict[int, RankRecord]], str], deadline_s: float,
                 resuming: bool = False) -> None:
        self.jobs, self.bucket, self.manifest, self.invoker = jobs, bucket, manifest, invoker
        self.job_id = manifest.job_id
        self._finish = finish
        self._manifest_lock = threading.Lock()
        self.resuming = resuming
        self.journal: RankJournal | None = None
        self.deadline = time.monotonic() + deadline_s
        self.cancelled = threading.Event()
        self._aborted = False
        self.ranks: dict[int, RankRecord] = {}
        self.thread = threading.Thread(target=self._run, name=f"job-{self.job_id}", daemon=True)

    def start(self) -> JobRunner:
        self.thread.start()
        return self

    def cancel(self) -> None:
        """Stop scheduling ranks and tell the running ones (the cancel marker, which they check
        between batches); the job is ``cancelling`` until every rank has stopped."""
        self.cancelled.set()
        write_marker(self.jobs.store, self.manifest, "cancel", reason="cancelled by request")
        self.jobs.save_manifest(self.bucket, self._update(cancel_requested=True, state="cancelling"))

    def _abort_collective(self, rank: int, reason: str) -> None:
        """A rank failed: its peers must not wait for it in the collective (a retry skips it)."""
        with self._manifest_lock:
            if self._aborted or not self.manifest.communicator:
                return
            self._aborted = True
        write_marker(self.jobs.store, self.manifest, "abort", reason=reason, rank=rank)

    def _update(self, **changes: Any) -> Manifest:
        """Replace the manifest by one with ``changes``; returns it (not yet written)."""
        with self._manifest_lock:
            self.manifest = self.manifest.model_copy(update=changes)
            return self.manifest

    # -- the job ----------------------------------------------------------------------------
    def _run(self) -> None:
        with logs.with_keys(job_id=self.job_id):
            self._run_job()

    def _run_job(self) -> None:
        try:
            self._schedule()
        except Exception as exc:  # a coordinator bug or S3 outage must still end the job visibly
            log_event(log, "job_crashed", logging.ERROR, error=repr(exc))
            self.jobs.save_manifest(self.bucket, self._update(error=f"coordinator error: {exc}", state="failed"))

    def _schedule(self) -> None:
        events = self.manifest.events
        self.ranks = self.jobs.ranks(self.bucket, self.job_id, len(events))
        self.journal = RankJournal(self.jobs, self.bucket, self.job_id)
        try:
            if self.resuming:  # a previous coordinator stopped mid-job: trust results in S3 over its journal
                for record in self.ranks.values():
                    if record.state != "succeeded":
                        self._settle_interrupted(record, events[record.rank])
            self._fan_out(events)
        finally:
            self.journal.close()
        self._complete()

    def _fan_out(self, events: tuple[WorkerEvent, ...]) -> None:
        todo = [rank for rank, record in self.ranks.items() if record.state != "succeeded"]
        started_at = self.manifest.started_at if self.manifest.started_at is not None else time.time()
        self.jobs.save_manifest(self.bucket, self._update(state="running", started_at=started_at))
        log_event(log, "job_running", ranks=len(events), to_run=len(todo))

        @logs.carry  # the pool's threads log with this job's keys, and each with its rank
        def run_rank(rank: int, event: WorkerEvent) -> None:
            with logs.with_keys(rank=rank):
                self._run_rank(rank, event)

        with ThreadPoolExecutor(max_workers=max(1, self.manifest.max_concurrency),
                                thread_name_prefix=f"ranks-{self.job_id[-6:]}") as pool:
            futures = [pool.submit(run_rank, rank, events[rank]) for rank in todo]
            wait(futures, timeout=max(0.0, self.deadline - time.monotonic()))
            if any(not future.done() for future in futures):
                self._update(error="job deadline passed (COSMIC_COORDINATOR_JOB_DEADLINE_S)")
                self.cancelled.set()  # ranks not started yet are not started; running ones finish on their own
            for future in futures:
                future.result()  # surfaces bugs in _run_rank

    def _complete(self) -> None:
        state = ending_state(self.manifest, self.ranks)
        ending: dict[str, Any] = {}
        try:
            ending["summary_key"] = self._finish(self.bucket, self.manifest, self.ranks)
        except Exception as exc:  # the ranks' results stay in S3; the job says why it has no summary
            log_event(log, "summary_failed", logging.ERROR, error=repr(exc))
            ending["summary_error"] = str(exc)
        ending.update(state=state, finished_at=time.time(),
                      failed_ranks={str(r.rank): r.attempts[-1].error for r in self.ranks.values()
                                    if r.state == "failed" and r.attempts})
        self.jobs.compact(self.bucket, self.job_id, self.ranks)
        final = self.jobs.save_manifest(self.bucket, self.manifest.model_copy(update=ending))
        request = final.request
        self.jobs.release_result_path(self.bucket, self.job_id, request.data_bucket, request.result_path)
        self._update(**ending)  # only now does a reader see the job ended: everything is in S3 first
        log_event(log, "job_done", state=state, seconds=round(final.finished_at - final.submitted_at, 3))

    def _settle_interrupted(self, record: RankRecord, event: WorkerEvent) -> None:
        """A rank not known finished after a restart: finished if its results for this job are in S3
        (its last journal entry may not have been flushed), else its interrupted attempt is lost."""
        key = result_key(event.result_path, record.rank)
        document = self.jobs.store.get_json(event.result_bucket, key)
        finished = (isinstance(document, dict) and document.get("job_id") == self.job_id
                    and document.get("status") == "succeeded")
        if finished:
            number = int(document.get("attempt", len(record.attempts) or 1))
            if not record.attempts or record.attempts[-1].attempt != number:
                record.attempts.append(Attempt(attempt=number, started_at=time.time()))
            attempt = record.attempts[-1]
            attempt.state, attempt.ended_at, attempt.response = "succeeded", time.time(), {"recovered_from": key}
        elif record.state == "running":
            attempt = record.attempts[-1]
            attempt.state, attempt.error = "lost", "the coordinator stopped while this attempt ran"
            attempt.ended_at = time.time()
        else:
            return
        self._save(record, "succeeded" if finished else "pending")
        log_event(log, "rank_settled", rank=record.rank, state=record.state)

    # -- one rank ---------------------------------------------------------------------------
    def _run_rank(self, rank: int, event: WorkerEvent) -> None:
        record = self.ranks[rank]
        budget = self.manifest.max_attempts
        tried = 0
        while tried < budget:
            if self.cancelled.is_set() or time.monotonic() > self.deadline:
                self._save(record, "cancelled" if record.state != "failed" or self.manifest.cancel_requested
                           else "failed")
                return
            attempt = Attempt(attempt=len(record.attempts) + 1, started_at=time.time())
            record.attempts.append(attempt)
            self._save(record, "running")
            outcome = self.invoker.invoke(replace(event, attempt=attempt.attempt).to_dict())
            tried += 1
            attempt.ended_at, attempt.report = time.time(), outcome.report
            if outcome.ok:
                attempt.response = outcome.response
                attempt.state = "cancelled" if (outcome.response or {}).get("status") == "cancelled" else "succeeded"
                self._save(record, attempt.state)
                return
            attempt.state, attempt.error = "failed", outcome.error
            log_event(log, "rank_attempt_failed", logging.WARNING, attempt=attempt.attempt, error=outcome.error)
            self._abort_collective(rank, f"rank {rank} attempt {attempt.attempt} failed: {outcome.error}")
            self._save(record, "failed")

    def _save(self, record: RankRecord, state: str) -> None:
        record.state = state
        assert self.journal is not None
        self.journal.record(record)
