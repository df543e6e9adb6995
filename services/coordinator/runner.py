"""Running a job: fan the ranks out, re-invoke failed ones, record every attempt in S3, then summarise.

One thread per job waits in its function's queue (:mod:`.capacity`) until it is given capacity
(``queued`` meanwhile), then runs its ranks on up to ``max_concurrency`` threads, each holding one
slot of the function's capacity and blocking in a synchronous invocation; a thread keeps its slot
for the next rank until the job has no rank left to start. Without the communicator ranks start as
slots free, so a job may run fewer ranks at once than its world size; with it, all of them start
together. A throttled invocation waits (the attempt shows ``throttled``) and spends no attempt; the
job's deadline bounds every wait. Every attempt's start and end is written to the rank's record before
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from services import logs
from services.contracts import AttemptState, JobState, RankState, WorkerEvent
from services.coordinator.capacity import FunctionQueue
from services.coordinator.control import write_marker
from services.coordinator.finish import ending_state
from services.coordinator.invoker import Invoker
from services.coordinator.manifest import Manifest
from services.coordinator.state import Attempt, JobStore, RankJournal, RankRecord
from services.keys import result_key
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
                 resuming: bool = False, queue: FunctionQueue | None = None) -> None:
        self.jobs, self.bucket, self.manifest, self.invoker = jobs, bucket, manifest, invoker
        self.job_id = manifest.job_id
        self._finish = finish
        self._manifest_lock = threading.Lock()
        self.resuming = resuming
        self.journal: RankJournal | None = None
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s  # from submission: time queued counts
        #: The function's queue, shared with the other jobs on it (None: a queue of one, no limit).
        self.queue = queue or FunctionQueue()
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
        self.jobs.save_manifest(self.bucket, self._update(cancel_requested=True, state=JobState.CANCELLING))

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
            try:
                self._run_job()
            finally:
                self.queue.leave(self.job_id)  # however the job ended, it holds up no job behind it

    def _run_job(self) -> None:
        try:
            self._schedule()
        except Exception as exc:  # a coordinator bug or S3 outage must still end the job visibly
            log_event(log, "job_crashed", logging.ERROR, error=repr(exc))
            self.jobs.save_manifest(self.bucket, self._update(error=f"coordinator error: {exc}",
                                                              state=JobState.FAILED))

    def _schedule(self) -> None:
        events = self.manifest.events
        self.ranks = self.jobs.ranks(self.bucket, self.job_id, len(events))
        self.journal = RankJournal(self.jobs, self.bucket, self.job_id)
        try:
            if self.resuming:  # a previous coordinator stopped mid-job: trust results in S3 over its journal
                for record in self.ranks.values():
                    if record.state != RankState.SUCCEEDED:
                        self._settle_interrupted(record, events[record.rank])
            self._fan_out(events)
        finally:
            self.journal.close()
        self._complete()

    def _fan_out(self, events: tuple[WorkerEvent, ...]) -> None:
        todo = deque(rank for rank, record in self.ranks.items() if record.state != RankState.SUCCEEDED)
        started_at = self.manifest.started_at if self.manifest.started_at is not None else time.time()
        gang = len(todo) if self.manifest.communicator else 1  # the communicator's ranks must all meet
        self.queue.enter(self.job_id)
        try:
            if todo and not self.queue.free_now(self.job_id, gang):
                if self.manifest.state != JobState.QUEUED:
                    self.jobs.save_manifest(self.bucket, self._update(state=JobState.QUEUED))
                log_event(log, "job_queued", ranks=len(events), to_run=len(todo),
                          position=self.queue.position(self.job_id), capacity=self.queue.limit)
            if todo and not self.queue.acquire(self.job_id, gang, self.cancelled, self.deadline):
                if not self.cancelled.is_set():
                    self._fail_on_deadline("while the job was queued")
                return
            self.jobs.save_manifest(self.bucket, self._update(state=JobState.RUNNING, started_at=started_at))
            log_event(log, "job_running", ranks=len(events), to_run=len(todo))
            if todo:
                self._run_ranks(events, todo, gang)
        finally:
            self.queue.leave(self.job_id)

    def _run_ranks(self, events: tuple[WorkerEvent, ...], todo: deque[int], held: int) -> None:
        """Run ``todo`` on threads that each hold a slot; the first ``held`` slots are already taken."""
        threads = max(held, min(max(1, self.manifest.max_concurrency), len(todo)))

        @logs.carry  # the pool's threads log with this job's keys, and each with its rank
        def work(holding: bool) -> None:
            if not holding and (not todo or not self.queue.acquire(self.job_id, 1, self.cancelled, self.deadline)):
                return
            try:
                while True:
                    try:
                        rank = todo.popleft()
                    except IndexError:
                        return
                    if not todo:
                        self.queue.leave(self.job_id)  # no rank left to start: the jobs behind move up
                    with logs.with_keys(rank=rank):
                        self._run_rank(rank, events[rank])
            finally:
                self.queue.release(1)

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"ranks-{self.job_id[-6:]}") as pool:
            futures = [pool.submit(work, index < held) for index in range(threads)]
            wait(futures, timeout=max(0.0, self.deadline - time.monotonic()))
            if any(not future.done() for future in futures):
                self._fail_on_deadline()
                self.cancelled.set()  # ranks not started yet are not started; running ones finish on their own
            for future in futures:
                future.result()  # surfaces bugs in _run_rank

    def _deadline_passed(self, when: str = "") -> str:
        return f"job deadline passed{' ' + when if when else ''} " \
               f"(COSMIC_COORDINATOR_JOB_DEADLINE_S = {self.deadline_s:g} s)"

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
                                    if r.state == RankState.FAILED and r.attempts})
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
                    and document.get("status") == AttemptState.SUCCEEDED)
        if finished:
            number = int(document.get("attempt", len(record.attempts) or 1))
            if not record.attempts or record.attempts[-1].attempt != number:
                record.attempts.append(Attempt(attempt=number, started_at=time.time()))
            attempt = record.attempts[-1]
            attempt.state, attempt.ended_at = AttemptState.SUCCEEDED, time.time()
            attempt.response = {"recovered_from": key}
        elif record.state == RankState.RUNNING:
            attempt = record.attempts[-1]
            attempt.state, attempt.error = AttemptState.LOST, "the coordinator stopped while this attempt ran"
            attempt.ended_at = time.time()
        else:
            return
        self._save(record, RankState.SUCCEEDED if finished else RankState.PENDING)
        log_event(log, "rank_settled", rank=record.rank, state=record.state)

    # -- one rank ---------------------------------------------------------------------------
    def _run_rank(self, rank: int, event: WorkerEvent) -> None:
        record = self.ranks[rank]
        budget = self.manifest.max_attempts
        tried = 0
        while tried < budget:
            if self.cancelled.is_set() or self._out_of_time():
                self._save(record, RankState.CANCELLED if record.state != RankState.FAILED
                           or self.manifest.cancel_requested else RankState.FAILED)
                return
            attempt = Attempt(attempt=len(record.attempts) + 1, started_at=time.time())
            record.attempts.append(attempt)
            self._save(record, RankState.RUNNING)

            def throttled(waiting: bool, attempt: Attempt = attempt) -> None:
                """Throttling is waiting: shown on the attempt, and the call that runs starts its time."""
                attempt.state = AttemptState.THROTTLED if waiting else AttemptState.RUNNING
                if not waiting:
                    attempt.started_at = time.time()
                self._save(record, RankState.RUNNING)

            outcome = self.invoker.invoke(replace(event, attempt=attempt.attempt).to_dict(), deadline=self.deadline,
                                          on_throttled=throttled)
            tried += 1
            attempt.ended_at, attempt.report = time.time(), outcome.report
            attempt.throttled_s = round(outcome.throttled_s, 3)
            attempt.log_tail = outcome.log_tail or None
            if outcome.ok:
                attempt.response = outcome.response
                cancelled = (outcome.response or {}).get("status") == AttemptState.CANCELLED
                attempt.state = AttemptState.CANCELLED if cancelled else AttemptState.SUCCEEDED
                self._save(record, RankState.CANCELLED if cancelled else RankState.SUCCEEDED)
                return
            attempt.state, attempt.error = AttemptState.FAILED, outcome.error
            log_event(log, "rank_attempt_failed", logging.WARNING, attempt=attempt.attempt, error=outcome.error)
            self._abort_collective(rank, f"rank {rank} attempt {attempt.attempt} failed: {outcome.error}")
            self._save(record, RankState.FAILED)
            if self._out_of_time():  # (a throttle wait ends at the deadline: this attempt may be the last)
                return

    def _out_of_time(self) -> bool:
        """Whether the job's deadline has passed; the first to see it says so on the job."""
        if time.monotonic() < self.deadline:
            return False
        self._fail_on_deadline()
        return True

    def _fail_on_deadline(self, when: str = "") -> None:
        with self._manifest_lock:
            if not self.manifest.error:
                self.manifest = self.manifest.model_copy(update={"error": self._deadline_passed(when)})

    def _save(self, record: RankRecord, state: str) -> None:
        record.state = state
        assert self.journal is not None
        self.journal.record(record)
