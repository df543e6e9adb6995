"""Running a job: fan the ranks out, re-invoke failed ones, record every attempt in S3, then summarise.

One thread per job waits in its function's queue (:mod:`.capacity`) until it is given capacity
(``queued`` meanwhile), then runs its ranks on up to ``max_concurrency`` threads, each holding one
slot of the function's capacity and blocking in a synchronous invocation; a thread keeps its slot
for the next rank until the job has no rank left to start. Without the communicator ranks start as
slots free, so a job may run fewer ranks at once than its world size; with it, all of them start
together. A throttled invocation waits (the attempt shows ``throttled``) and spends no attempt; the
job's deadline bounds every wait. Every attempt is in S3 before it is invoked (first attempts a
wave at a time, :mod:`.waves`), so a coordinator killed at any moment restarts (``resume``)
knowing which ranks finished and which attempts may still be running: those are not invoked
again, their own word in S3 is awaited (:mod:`.orphans`). Of two attempts of a rank alive at once,
only the one holding the rank's commit claim writes. With ``speculate``, stragglers get one backup
attempt each (:mod:`.speculation`); the first to finish wins, both are billed. Every line the job's
threads log carries its ``job_id`` (and a rank's ``rank``): :func:`services.logs.with_keys`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from services import logs
from services.contracts import AttemptState, JobState, RankState, WorkerEvent
from services.coordinator.capacity import FunctionQueue
from services.coordinator.control import write_marker
from services.coordinator.finish import ending_state
from services.coordinator.invoker import READ_MARGIN_S, Invoker, Outcome
from services.coordinator.journal import RankJournal
from services.coordinator.manifest import Manifest
from services.coordinator.orphans import await_word, hear, in_flight, word_of
from services.coordinator.speculation import Speculator
from services.coordinator.state import Attempt, JobStore, RankRecord
from services.coordinator.waves import Waves
from services.keys import commit_key
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
                 resuming: bool = False, queue: FunctionQueue | None = None, orphan_grace_s: float = 60.0,
                 declare_ahead: int = 8) -> None:
        self.jobs, self.bucket, self.manifest, self.invoker = jobs, bucket, manifest, invoker
        self.job_id = manifest.job_id
        self._finish = finish
        self._manifest_lock = threading.Lock()
        self.resuming = resuming
        #: How long an attempt left running by a killed coordinator may stay silent before it is taken
        #: as never sent (:func:`.orphans.await_word`); ranks per thread declared at once (:mod:`.waves`).
        self.orphan_grace_s, self.declare_ahead = orphan_grace_s, max(1, declare_ahead)
        self.journal: RankJournal | None = None
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s  # from submission: time queued counts
        #: The function's queue, shared with the other jobs on it (None: a queue of one, no limit).
        self.queue = queue or FunctionQueue()
        self.cancelled = threading.Event()
        self._aborted = False
        self.ranks: dict[int, RankRecord] = {}
        #: Held while a rank's record changes: a rank's attempt and its backup end on two threads.
        self._records_lock = threading.RLock()
        self._backups: dict[int, threading.Thread] = {}  # rank -> its speculative backup's thread
        self._declared: set[int] = set()  # ranks whose first attempt is in S3 and not yet sent
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
        unfinished = [rank for rank, record in self.ranks.items() if record.state != RankState.SUCCEEDED]
        # attempts a killed coordinator left running hold capacity already: await them first
        todo = deque(sorted(unfinished, key=lambda rank: not in_flight(self.ranks[rank])))
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
        waves = Waves(todo, self.declare_ahead * threads, self._declare)

        @logs.carry  # the pool's threads log with this job's keys, and each with its rank
        def work(holding: bool) -> None:
            if not holding and (not waves.left() or not self.queue.acquire(self.job_id, 1, self.cancelled,
                                                                          self.deadline)):
                return
            try:
                while (rank := waves.next()) is not None:
                    if not waves.left():
                        self.queue.leave(self.job_id)  # no rank left to start: the jobs behind move up
                    with logs.with_keys(rank=rank):
                        self._run_rank(rank, events[rank])
            finally:
                self.queue.release(1)

        done = threading.Event()
        watcher = Speculator(self.queue, self.job_id, self.ranks, self.manifest.request.speculate_multiple,
                             lambda rank: self._start_backup(rank, events[rank]))
        monitor = threading.Thread(target=logs.carry(watcher.watch), args=(waves, done, self.cancelled),
                                   name=f"speculate-{self.job_id[-6:]}", daemon=True)
        if self.manifest.request.speculate:
            monitor.start()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"ranks-{self.job_id[-6:]}") as pool:
            futures = [pool.submit(work, index < held) for index in range(threads)]
            wait(futures, timeout=self._seconds_left())
            if any(not future.done() for future in futures):
                self._fail_on_deadline()
                self.cancelled.set()  # ranks not started yet are not started; running ones finish on their own
            done.set()
            if monitor.is_alive():
                monitor.join()
            for backup in list(self._backups.values()):
                backup.join(timeout=self._seconds_left())  # a superseded one stops within about a second
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
        """A rank not known finished after a restart. Its result in S3 settles it (the journal's
        last segment may not have been flushed); an attempt that was running, or waiting out
        throttling (it may have been sent again since), may still be: :meth:`_run_rank` awaits its word."""
        last = record.attempts[-1] if record.attempts else None
        word = word_of(self.jobs.store, event, last.attempt if last else 1)
        if word is None or word.state != AttemptState.SUCCEEDED:
            return
        if last is None or last.attempt != word.attempt:
            last = Attempt(attempt=word.attempt, started_at=time.time())
            record.attempts.append(last)
        hear(last, word)
        self._save(record, RankState.SUCCEEDED)
        log_event(log, "rank_settled", rank=record.rank, state=record.state)

    def _await_orphan(self, record: RankRecord, event: WorkerEvent) -> bool:
        """Wait for the word of the attempt a killed coordinator left running, until its deadline;
        True when that settles the rank (succeeded, cancelled), False when it must run again."""
        attempt = record.attempts[-1]
        until = attempt.started_at + self.invoker.function_timeout_s + READ_MARGIN_S
        log_event(log, "orphan_awaited", attempt=attempt.attempt, seconds_left=round(until - time.time(), 1))
        word = await_word(self.jobs.store, event, attempt.attempt, attempt.started_at,
                          min(until, time.time() + self._seconds_left()), self.orphan_grace_s)
        hear(attempt, word)
        log_event(log, "orphan_settled", attempt=attempt.attempt, state=attempt.state)
        if attempt.state == AttemptState.SUCCEEDED:
            self._save(record, RankState.SUCCEEDED)
            return True
        if attempt.state == AttemptState.CANCELLED:
            self._save(record, RankState.CANCELLED)
            return True
        self._abort_collective(record.rank, f"rank {record.rank} attempt {attempt.attempt} {attempt.state}")
        self._save(record, RankState.FAILED if attempt.state == AttemptState.FAILED else RankState.PENDING)
        return False

    # -- one rank ---------------------------------------------------------------------------
    def _declare(self, wave: list[int]) -> None:
        """Record the first attempt of each rank of ``wave`` (an orphan being awaited needs none) and
        return once S3 has them: one journal PUT for the wave (:class:`.waves.Waves`)."""
        change = 0
        with self._records_lock:
            for rank in wave:
                if not in_flight(self.ranks[rank]):
                    change = self._next_attempt(self.ranks[rank])[1]
                    self._declared.add(rank)
        if change:
            self._durable(change)

    def _run_rank(self, rank: int, event: WorkerEvent) -> None:
        record = self.ranks[rank]
        budget = self.manifest.max_attempts
        tried = 0
        with self._records_lock:
            declared = rank in self._declared  # its attempt is in S3, not yet sent
            self._declared.discard(rank)
        if not declared and in_flight(record):  # left running when the previous coordinator was killed
            if self._await_orphan(record, event):
                return
            tried = 1
        while tried < budget:
            if self.cancelled.is_set() or self._out_of_time():
                if declared:  # never sent: it was no attempt
                    record.attempts.pop()
                self._save(record, RankState.CANCELLED if record.state != RankState.FAILED
                           or self.manifest.cancel_requested else RankState.FAILED)
                return
            if declared:
                attempt, declared = record.attempts[-1], False
                attempt.started_at = time.time()  # sent now
            else:
                attempt = self._attempt(record, event)
            ended = self._conclude(record, attempt, self._invoke(record, attempt, event))
            tried += 1
            backup = self._backups.get(rank)
            if ended not in (AttemptState.SUCCEEDED, AttemptState.CANCELLED) and backup is not None:
                backup.join()  # the rank's other attempt decides it now
            with self._records_lock:
                if record.state == RankState.SUCCEEDED:
                    return
                if ended == AttemptState.CANCELLED:
                    self._save(record, RankState.CANCELLED)
                    return
                self._save(record, RankState.FAILED)
            self._abort_collective(rank, f"rank {rank} attempt {attempt.attempt} {ended}: {attempt.error}")
            if self._out_of_time():  # (a throttle wait ends at the deadline: this attempt may be the last)
                return

    def _attempt(self, record: RankRecord, event: WorkerEvent, speculative: bool = False) -> Attempt:
        """A new attempt of the rank, in S3 before it is invoked (a restarted coordinator must know
        it may be running). Before a retry the rank's commit claim is cleared: the attempt holding it
        has ended, and its successor must be able to write."""
        with self._records_lock:
            attempt, change = self._next_attempt(record, speculative)
        self._durable(change)
        if attempt.attempt > 1 and not speculative:
            self.jobs.store.delete(event.result_bucket, commit_key(event.result_path, event.job_id, event.rank))
        return attempt

    def _next_attempt(self, record: RankRecord, speculative: bool = False) -> tuple[Attempt, int]:
        """Under the records lock: the rank's next attempt, noted in the journal (not yet in S3);
        returns it and the change's number. A backup leaves a succeeded rank succeeded."""
        attempt = Attempt(attempt=len(record.attempts) + 1, started_at=time.time(), speculative=speculative)
        record.attempts.append(attempt)
        return attempt, self._save(record, RankState.RUNNING if record.state != RankState.SUCCEEDED else record.state)

    def _invoke(self, record: RankRecord, attempt: Attempt, event: WorkerEvent) -> Outcome:
        def throttled(waiting: bool) -> None:
            """Throttling is waiting: shown on the attempt, and the call that runs starts its time.
            (Not waited into S3: a restart takes a throttled attempt as possibly sent, too.)"""
            with self._records_lock:
                attempt.state = AttemptState.THROTTLED if waiting else AttemptState.RUNNING
                if not waiting:
                    attempt.started_at = time.time()
                self._save(record, record.state)

        payload = event.to_dict()
        payload["attempt"] = attempt.attempt  # (not dataclasses.replace: 5 us a call, on the fan-out's path)
        return self.invoker.invoke(payload, deadline=self.deadline, on_throttled=throttled)

    def _conclude(self, record: RankRecord, attempt: Attempt, outcome: Outcome) -> AttemptState:
        """Record how the attempt ended; the rank succeeds with the first attempt that succeeds."""
        status = (outcome.response or {}).get("status") if outcome.ok else None
        with self._records_lock:
            attempt.ended_at, attempt.report = time.time(), outcome.report
            attempt.throttled_s = round(outcome.throttled_s, 3)
            attempt.log_tail = outcome.log_tail or None
            if status in (AttemptState.SUCCEEDED, AttemptState.CANCELLED, AttemptState.SUPERSEDED):
                attempt.state = AttemptState(status)
                attempt.response = outcome.response if status == AttemptState.SUCCEEDED else None
            else:
                attempt.state = AttemptState.FAILED
                attempt.error = outcome.error or f"the worker answered status {status!r}"
                log_event(log, "rank_attempt_failed", logging.WARNING, attempt=attempt.attempt, error=attempt.error)
            self._save(record, RankState.SUCCEEDED if attempt.state == AttemptState.SUCCEEDED else record.state)
            return attempt.state

    # -- speculative backups ----------------------------------------------------------------
    def _start_backup(self, rank: int, event: WorkerEvent) -> None:
        thread = threading.Thread(target=logs.carry(self._backup), args=(rank, event),
                                  name=f"backup-{self.job_id[-6:]}-{rank}", daemon=True)
        self._backups[rank] = thread
        log_event(log, "backup_started", rank=rank)
        thread.start()

    def _backup(self, rank: int, event: WorkerEvent) -> None:
        try:
            with logs.with_keys(rank=rank):
                record = self.ranks[rank]
                attempt = self._attempt(record, event, speculative=True)
                ended = self._conclude(record, attempt, self._invoke(record, attempt, event))
                log_event(log, "backup_ended", attempt=attempt.attempt, state=ended)
        finally:
            self.queue.release(1)

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

    def _seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _save(self, record: RankRecord, state: str) -> int:
        """Set the rank's state and note the record in the journal; returns the change's number."""
        record.state = state
        assert self.journal is not None
        return self.journal.record(record)

    def _durable(self, change: int) -> None:
        """Wait until the journal holds ``change`` in S3 (an attempt must be there before it is sent)."""
        assert self.journal is not None
        self.journal.wait_written(change)
