"""Running a job: fan the ranks out, re-invoke failed ones, record every attempt in S3, then summarise.

One thread per job schedules its ranks on a pool of ``max_concurrency`` threads, each blocking in
a synchronous invocation. Every attempt's start and end is written to the rank's record before
anything else happens, so a coordinator killed at any moment restarts (``resume``) knowing which
ranks finished: those are never run again; a rank caught running is re-invoked with the next
attempt number, and since a rank writes only its own keys the re-run replaces, never duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from services.contracts import result_key
from services.coordinator.invoker import Invoker
from services.coordinator.state import TERMINAL, Attempt, JobStore, RankRecord
from services.logs import event as log_event

log = logging.getLogger("cosmic.coordinator.runner")


class JobRunner:
    """Drives one job from its manifest to a terminal state."""

    def __init__(self, jobs: JobStore, bucket: str, manifest: dict[str, Any], invoker: Invoker,
                 finish: Callable[[str, dict[str, Any], dict[int, RankRecord]], None], deadline_s: float) -> None:
        self.jobs, self.bucket, self.manifest, self.invoker = jobs, bucket, manifest, invoker
        self.job_id: str = manifest["job_id"]
        self._finish = finish
        self.deadline = time.monotonic() + deadline_s
        self.cancelled = threading.Event()
        self.ranks: dict[int, RankRecord] = {}
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"job-{self.job_id}", daemon=True)

    def start(self) -> JobRunner:
        self.thread.start()
        return self

    def cancel(self) -> None:
        self.cancelled.set()

    # -- the job ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._schedule()
        except Exception as exc:  # a coordinator bug or S3 outage must still end the job visibly
            log_event(log, "job_crashed", logging.ERROR, job_id=self.job_id, error=repr(exc))
            self.manifest["error"] = f"coordinator error: {exc}"
            self.manifest["state"] = "failed"
            self.jobs.save_manifest(self.bucket, self.manifest)

    def _schedule(self) -> None:
        events = self.manifest["events"]
        self.ranks = self.jobs.ranks(self.bucket, self.job_id, len(events))
        for record in self.ranks.values():
            if record.state == "running":  # a previous coordinator stopped while this attempt ran
                self._settle_interrupted(record, events[record.rank])
        todo = [rank for rank, record in self.ranks.items() if record.state != "succeeded"]
        self.manifest["state"] = "running"
        self.manifest.setdefault("started_at", time.time())
        self.jobs.save_manifest(self.bucket, self.manifest)
        log_event(log, "job_running", job_id=self.job_id, ranks=len(events), to_run=len(todo))
        with ThreadPoolExecutor(max_workers=max(1, self.manifest["max_concurrency"]),
                                thread_name_prefix=f"ranks-{self.job_id[-6:]}") as pool:
            futures = [pool.submit(self._run_rank, rank, events[rank]) for rank in todo]
            wait(futures, timeout=max(0.0, self.deadline - time.monotonic()))
            if any(not future.done() for future in futures):
                self.manifest["error"] = "job deadline passed (COSMIC_JOB_DEADLINE_S)"
                self.cancelled.set()  # ranks not started yet are not started; running ones finish on their own
            for future in futures:
                future.result()  # surfaces bugs in _run_rank
        self._complete()

    def _complete(self) -> None:
        states = {record.state for record in self.ranks.values()}
        if "failed" in states or self.manifest.get("error"):
            state = "failed"
        elif "cancelled" in states or "pending" in states:
            state = "cancelled"
        else:
            state = "succeeded"
        try:
            self._finish(self.bucket, self.manifest, self.ranks)
        except Exception as exc:  # the ranks' results stay in S3; the job says why it has no summary
            log_event(log, "summary_failed", logging.ERROR, job_id=self.job_id, error=repr(exc))
            self.manifest["summary_error"] = str(exc)
        self.manifest["state"] = state
        self.manifest["finished_at"] = time.time()
        self.manifest["failed_ranks"] = {str(r.rank): r.attempts[-1].error for r in self.ranks.values()
                                         if r.state == "failed" and r.attempts}
        self.jobs.save_manifest(self.bucket, self.manifest)
        request = self.manifest["request"]
        self.jobs.release_result_path(self.bucket, self.job_id, request["data_bucket"], request["result_path"])
        log_event(log, "job_done", job_id=self.job_id, state=state,
                  seconds=round(self.manifest["finished_at"] - self.manifest["submitted_at"], 3))

    def _settle_interrupted(self, record: RankRecord, event: dict[str, Any]) -> None:
        """An attempt left ``running``: if its results are in S3, it succeeded; otherwise it is lost."""
        attempt = record.attempts[-1]
        document = self.jobs.store.get_json(event["result_bucket"], result_key(event["result_path"], record.rank))
        finished = (isinstance(document, dict) and document.get("job_id") == self.job_id
                    and document.get("attempt") == attempt.attempt and document.get("status") == "succeeded")
        attempt.ended_at = time.time()
        if finished:
            attempt.state = "succeeded"
            attempt.response = {"recovered_from": result_key(event["result_path"], record.rank)}
        else:
            attempt.state, attempt.error = "lost", "the coordinator stopped while this attempt ran"
        self._save(record, "succeeded" if finished else "pending")
        log_event(log, "attempt_settled", job_id=self.job_id, rank=record.rank, attempt=attempt.attempt,
                  state=attempt.state)

    # -- one rank ---------------------------------------------------------------------------
    def _run_rank(self, rank: int, event: dict[str, Any]) -> None:
        record = self.ranks[rank]
        budget = self.manifest["max_attempts"]
        tried = 0
        while tried < budget:
            if self.cancelled.is_set() or time.monotonic() > self.deadline:
                self._save(record, "cancelled" if record.state != "failed" else "failed")
                return
            attempt = Attempt(attempt=len(record.attempts) + 1, started_at=time.time())
            record.attempts.append(attempt)
            self._save(record, "running")
            outcome = self.invoker.invoke({**event, "attempt": attempt.attempt})
            tried += 1
            attempt.ended_at, attempt.report = time.time(), outcome.report
            if outcome.ok:
                attempt.response = outcome.response
                attempt.state = "cancelled" if (outcome.response or {}).get("status") == "cancelled" else "succeeded"
                self._save(record, attempt.state)
                return
            attempt.state, attempt.error = "failed", outcome.error
            log_event(log, "rank_attempt_failed", logging.WARNING, job_id=self.job_id, rank=rank,
                      attempt=attempt.attempt, error=outcome.error)
            self._save(record, "failed")

    def _save(self, record: RankRecord, state: str) -> None:
        record.state = state
        self.jobs.save_rank(self.bucket, self.job_id, record)

    # -- progress ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for record in list(self.ranks.values()):
            tally[record.state] = tally.get(record.state, 0) + 1
        return tally

    @property
    def done(self) -> bool:
        return self.manifest.get("state") in TERMINAL and not self.thread.is_alive()
