"""The coordinator's work behind the API: submit, track, cancel, retry, resume, summarise, report.

Everything a job is lives in S3 (:mod:`.state`); this object only holds the running job threads
and the clients, so a restarted coordinator calls :meth:`Coordinator.resume` and carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from operator import attrgetter
from typing import Any

from services.contracts import JobState
from services.coordinator import finish, plots, progress, report, timeline
from services.coordinator.capacity import Capacity, FunctionQueue
from services.coordinator.config import CoordinatorSettings
from services.coordinator.control import write_marker
from services.coordinator.durable import PatientStore
from services.coordinator.errors import (
    DependencyUnavailable,
    JobConflict,
    JobNotFound,
    PlotNotFound,
    RankNotFound,
    ReportNotFound,
)
from services.coordinator.invoker import Invoker, InvokeStats
from services.coordinator.manifest import Manifest, ManifestError
from services.coordinator.payload import JobRequest
from services.coordinator.planning import choose_partitions, current_address, plan
from services.coordinator.pricing import load_prices
from services.coordinator.runner import JobRunner
from services.coordinator.runners import Runners
from services.coordinator.state import TERMINAL, JobStore, RankRecord, new_job_id
from services.logs import event as log_event
from services.s3store import S3Store, StoreError

log = logging.getLogger("cosmic.coordinator")


#: How many recent jobs the duration/cost plot of one job looks through for jobs like it.
SCALING_JOBS = 50


class Coordinator:
    def __init__(self, settings: CoordinatorSettings, store: S3Store | None = None) -> None:
        self.settings = settings
        self.store = store or S3Store()
        self.jobs = JobStore(self.store, settings.state_bucket)
        # the job threads' view: their writes wait out an S3 outage (up to a job's deadline) instead of
        # crashing the job; the API's requests use the plain store and answer 503 at once
        self.patient = PatientStore(self.store, settings.job_deadline_s)
        self._job_state = self.jobs.view(self.patient)
        self.prices = load_prices()
        self.stats = InvokeStats()
        self._runners = Runners()
        self._invokers: dict[str, Invoker] = {}
        self._queues: dict[str, FunctionQueue] = {}  # per function: the jobs waiting for its capacity
        self._lock = threading.Lock()
        self.progress = progress.ProgressReader(self.store)

    # -- submit -----------------------------------------------------------------------------
    def submit(self, request: JobRequest, idempotency: str | None = None) -> tuple[str, bool, list[str]]:
        """Plan and start a job: ``(job_id, created, warnings)``; raises PlanError (422) or JobConflict (409)."""
        bucket = self.jobs.bucket_for(request.bucket)
        if idempotency:
            existing = self.jobs.lookup_idempotent(bucket, idempotency)
            if existing is not None and self.jobs.locate(existing) is not None:
                return existing, False, []
            if existing is not None:  # a coordinator killed between the key and the manifest: no such job
                self.jobs.forget_idempotent(bucket, idempotency)
        partitions = choose_partitions(self.store, request)
        job_id = new_job_id()
        rendezvous, warnings = self._rendezvous_address()
        function = request.function or self.settings.worker.function
        capacity = self._capacity(function)
        job_plan = plan(request, partitions, job_id=job_id, function_timeout_s=self.settings.worker.timeout,
                        max_world_size=self.settings.max_world_size, rendezvous=rendezvous,
                        max_concurrency_limit=self.settings.max_concurrency_limit, capacity=capacity)
        warnings += job_plan.warnings
        warnings += self._preflight(function, capacity, job_plan.max_concurrency)  # before any lock
        holder = self.jobs.take_result_path(bucket, job_id, request.data_bucket, request.result_path)
        if holder is not None:
            raise JobConflict(f"job {holder} is still writing to s3://{request.data_bucket}/{request.result_path}",
                              job_id=job_id, holder=holder)
        if idempotency:
            winner = self.jobs.idempotent_job(bucket, idempotency, job_id)
            if winner != job_id:  # another request with the same key won the race
                self.jobs.release_result_path(bucket, job_id, request.data_bucket, request.result_path)
                return winner, False, []
        manifest = Manifest.from_plan(job_id, request, job_plan, function=function,
                                      max_attempts=request.max_attempts or self.settings.max_attempts,
                                      rendezvous=rendezvous, idempotency_key=idempotency, warnings=warnings)
        manifest = self.jobs.save_manifest(bucket, manifest)
        log_event(log, "job_submitted", job_id=job_id, world_size=len(job_plan.events),
                  partitions=len(job_plan.partitions), function=function, communicator=manifest.communicator)
        self._start(bucket, manifest)
        return job_id, True, warnings

    def _rendezvous_address(self) -> tuple[str | None, list[str]]:
        """The rendezvous server's current address for this job's ranks, and a warning if the name does not resolve.

        On AWS the name's record follows the rendezvous task; resolving it here, once per job, gives
        every rank the same answer however stale their own resolvers are. A name that does not
        resolve is passed on as is, for the workers to try.
        """
        endpoint = self.settings.rendezvous_endpoint
        if not endpoint:
            return None, []
        try:
            return current_address(endpoint), []
        except OSError as exc:
            message = f"the rendezvous name in {endpoint} does not resolve here ({exc}): workers get the name"
            log_event(log, "rendezvous_unresolved", logging.WARNING, endpoint=endpoint, error=str(exc))
            return endpoint, [message]

    def _capacity(self, function: str) -> Capacity | None:
        """The function's capacity as Lambda states it now; the function's queue follows it."""
        capacity = self._invoker(function).capacity()
        self._queue(function).set_limit(capacity.limit if capacity is not None else None)
        return capacity

    @staticmethod
    def _preflight(function: str, capacity: Capacity | None, concurrency: int) -> list[str]:
        """Say so when a job cannot all run at once (the function's or the account's concurrency)."""
        if capacity is not None and capacity.limit < concurrency:
            message = (f"{function} may run {capacity.limit} at once ({capacity.source}), the job wants "
                       f"{concurrency} at once: its ranks start as capacity frees")
            log_event(log, "preflight_warning", logging.WARNING, function=function, message=message)
            return [message]
        return []

    def _start(self, bucket: str, manifest: Manifest, resuming: bool = False) -> None:
        queue = self._queue(manifest.function)
        queue.enter(manifest.job_id)  # in line in the order jobs are submitted, not the order their threads run
        runner = JobRunner(self._job_state, bucket, manifest, self._invoker(manifest.function), self._finish,
                           self.settings.job_deadline_s, resuming=resuming, queue=queue,
                           orphan_grace_s=self.settings.orphan_start_grace_s,
                           declare_ahead=self.settings.declare_ahead)
        self._runners.add(runner)
        runner.start()

    def _queue(self, function: str) -> FunctionQueue:
        with self._lock:
            return self._queues.setdefault(function, FunctionQueue())

    def _invoker(self, function: str) -> Invoker:
        with self._lock:
            if function not in self._invokers:
                self._invokers[function] = Invoker(function, self.settings.worker.timeout,
                                                   self.settings.max_concurrency_limit,
                                                   retries=self.settings.invoke_retries, stats=self.stats)
            return self._invokers[function]

    # -- resume, cancel, retry ----------------------------------------------------------------
    def resume(self) -> list[str]:
        """Restart every job a previous coordinator left running; returns their ids. An object that
        cannot be read is skipped and logged (the job shows it); S3 not answering is raised."""
        resumed = []
        sized: set[str] = set()  # functions whose capacity was read: once each, not once per job
        for bucket, job_id in self.jobs.active_job_ids():
            try:
                found = self.jobs.manifest(job_id)
            except ManifestError as exc:  # one unreadable job must not keep the others from resuming
                log_event(log, "job_unreadable", logging.ERROR, job_id=job_id, error=str(exc))
                continue
            if found is None or found[1].state in TERMINAL or job_id in self._runners:
                continue
            log_event(log, "job_resumed", job_id=job_id)
            if found[1].function not in sized:
                try:
                    self._capacity(found[1].function)
                except DependencyUnavailable as exc:  # Lambda down at start: resume anyway, its ranks wait it out
                    log_event(log, "capacity_unknown", logging.WARNING, function=found[1].function, error=str(exc))
                sized.add(found[1].function)
            self._start(bucket, found[1], resuming=True)
            resumed.append(job_id)
        return resumed

    def resume_when_s3_answers(self, retry_s: float = 2.0) -> threading.Thread | None:
        """Resume now; if S3 gives no answer, keep trying from a thread (the API serves meanwhile,
        answering 503 for what needs S3), so a coordinator started during an outage still resumes."""
        try:
            resumed = self.resume()
        except StoreError as exc:
            if not exc.unanswered:
                raise
            log_event(log, "resume_waiting_for_s3", logging.WARNING, endpoint=exc.endpoint, error=str(exc)[:200])
        else:
            log_event(log, "jobs_resumed", count=len(resumed))
            return None

        def again() -> None:
            while True:
                time.sleep(retry_s)
                try:
                    resumed = self.resume()
                except StoreError as exc:
                    if not exc.unanswered:
                        log_event(log, "resume_failed", logging.ERROR, error=str(exc))
                        return
                    continue
                log_event(log, "jobs_resumed", count=len(resumed))
                return

        thread = threading.Thread(target=again, name="resume", daemon=True)
        thread.start()
        return thread

    def cancel(self, job_id: str) -> dict[str, Any]:
        _bucket, manifest = self._manifest(job_id)
        if manifest.state in TERMINAL:
            raise JobConflict(f"job {job_id} is already {manifest.state}", job_id=job_id, state=manifest.state)
        runner = self._runners.get(job_id)
        if runner is not None:
            runner.cancel()
        else:  # not running here (another coordinator's, or between its restarts): the marker stops its ranks
            write_marker(self.store, manifest, "cancel", reason="cancelled by request")
        log_event(log, "job_cancel_requested", job_id=job_id)
        return self.status(job_id)

    def retry(self, job_id: str) -> dict[str, Any]:
        """Re-run only the failed ranks of a finished job (their attempt numbers continue)."""
        bucket, manifest = self._manifest(job_id)
        if manifest.state != JobState.FAILED:
            raise JobConflict(f"only a failed job can be retried; job {job_id} is {manifest.state}",
                              job_id=job_id, state=manifest.state)
        request = manifest.request
        holder = self.jobs.take_result_path(bucket, job_id, request.data_bucket, request.result_path)
        if holder is not None:
            raise JobConflict(f"job {holder} is now writing to the same result path", job_id=job_id, holder=holder)
        manifest = manifest.model_copy(update={"state": JobState.QUEUED, "error": None, "summary_error": None,
                                               "retried_at": time.time()})
        self._start(bucket, self.jobs.save_manifest(bucket, manifest))
        return self.status(job_id)

    # -- reading --------------------------------------------------------------------------------
    def running_jobs(self) -> int:
        return self._runners.running()

    def _manifest(self, job_id: str) -> tuple[str, Manifest]:
        runner = self._runners.get(job_id)
        if runner is not None:
            return runner.bucket, runner.manifest
        found = self.jobs.manifest(job_id)
        if found is None:
            raise JobNotFound(job_id)
        return found

    def status(self, job_id: str, ranks: bool = True) -> dict[str, Any]:
        """The job's state and counts, and with ``ranks`` every rank's attempts (for a job of
        10,000 ranks that list is most of the time and megabytes: pollers leave it out)."""
        try:
            bucket, manifest = self._manifest(job_id)
        except ManifestError as exc:  # shown on the job, not a 500: its other objects may still be fine
            log_event(log, "job_unreadable", logging.ERROR, job_id=job_id, error=str(exc))
            return {"job_id": job_id, "state": "unreadable", "error": str(exc),
                    "warnings": list(self.jobs.unreadable.get(job_id, []))}
        runner = self._runners.get(job_id)
        records = runner.ranks if runner and runner.ranks else self.jobs.ranks(bucket, job_id, manifest.world_size)
        counts = Counter(map(attrgetter("state"), list(records.values())))  # C speed: pollers ask often
        request = manifest.request
        queued = runner is not None and manifest.state == JobState.QUEUED
        return progress.annotate({
            "job_id": job_id, "state": manifest.state,
            "queue_position": runner.queue.position(job_id) if queued else None,
            "submitted_at": manifest.submitted_at,
            "finished_at": manifest.finished_at, "world_size": manifest.world_size,
            "partitions": len(manifest.partitions), "function": manifest.function,
            "communicator": manifest.communicator, "result": f"s3://{request.data_bucket}/{request.result_path}",
            "ranks_by_state": {str(state): count for state, count in counts.items()},
            "error": manifest.error, "failed_ranks": manifest.failed_ranks or {},
            "summary_key": manifest.summary_key,
            "warnings": list(manifest.warnings) + [f"skipped: {note}" for note in self.jobs.unreadable.get(job_id, [])],
            "ranks": [{"rank": r.rank, "state": r.state, "attempts": [
                {"attempt": a.attempt, "state": a.state, "started_at": a.started_at, "ended_at": a.ended_at,
                 "error": a.error, "throttled_s": a.throttled_s,
                 **{name: a.report.get(name) for name in ("duration_ms", "init_duration_ms", "max_memory_used_mb",
                                                          "cpu_vcpus", "cpu_enforced_by")}} for a in list(r.attempts)]}
                for r in list(records.values())] if ranks else None,
        }, self.progress.records(request.data_bucket, request.result_path, job_id, manifest.finished_at),
            self._runners.partitions_per_rank(job_id, manifest))

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        listed = []
        for _, job_id in self.jobs.job_ids()[:limit]:
            try:
                _, manifest = self._manifest(job_id)
            except JobNotFound:
                continue
            except ManifestError as exc:  # one unreadable job must not hide the others; it shows why
                log_event(log, "job_unreadable", logging.ERROR, job_id=job_id, error=str(exc))
                listed.append({"job_id": job_id, "state": "unreadable", "error": str(exc)})
                continue
            listed.append({"job_id": job_id, "state": manifest.state, "submitted_at": manifest.submitted_at,
                           "world_size": manifest.world_size, "result_path": manifest.request.result_path,
                           "partitions": len(manifest.partitions), "finished_at": manifest.finished_at,
                           "summary_key": manifest.summary_key})
        return listed

    def logs(self, job_id: str, rank: int) -> dict[str, Any]:
        """Each attempt of one rank with the log tail Lambda returned for it (None: not returned yet)."""
        bucket, manifest = self._manifest(job_id)
        if not 0 <= rank < manifest.world_size:
            raise RankNotFound(f"job {job_id} has ranks 0 to {manifest.world_size - 1}, not {rank}",
                               job_id=job_id, rank=rank)
        runner = self._runners.get(job_id)
        ranks = runner.ranks if runner and runner.ranks else self.jobs.ranks(bucket, job_id, manifest.world_size)
        record = ranks.get(rank)
        attempts = record.attempts if record is not None else []
        return {"job_id": job_id, "rank": rank, "state": record.state if record is not None else "pending",
                "attempts": [{"attempt": a.attempt, "state": a.state, "started_at": a.started_at,
                              "ended_at": a.ended_at, "error": a.error, "log_tail": a.log_tail} for a in attempts]}

    def summary(self, job_id: str) -> dict[str, Any]:
        _bucket, manifest = self._manifest(job_id)
        return self._summary(job_id, manifest)

    def _summary(self, job_id: str, manifest: Manifest) -> dict[str, Any]:
        if manifest.state not in TERMINAL:
            raise JobConflict(f"job {job_id} is {manifest.state}: its report comes when it ends",
                              job_id=job_id, state=manifest.state)
        request = manifest.request
        document = self.store.get_json(request.data_bucket, f"{request.result_path}/summary.json")
        if document is None or document.get("job_id") != job_id:
            raise ReportNotFound(job_id, manifest.summary_error or "not written")
        return document

    def plot(self, job_id: str, name: str) -> bytes:
        """The named figure as PNG; the timeline is drawn while the job runs too, the others from its report."""
        if name not in plots.PLOTS:
            raise PlotNotFound(f"no plot named {name!r}; there are {', '.join(plots.PLOTS)}", job_id=job_id, plot=name)
        bucket, manifest = self._manifest(job_id)
        if name == "timeline":
            runner = self._runners.get(job_id)
            ranks = runner.ranks if runner and runner.ranks else self.jobs.ranks(bucket, job_id, manifest.world_size)
            if not any(record.attempts for record in ranks.values()):
                raise PlotNotFound(f"job {job_id} has no attempt yet to plot", job_id=job_id, plot=name)
            return plots.to_png(plots.rank_timeline(timeline.bars(ranks, time.time()), manifest.submitted_at))
        document = self._summary(job_id, manifest)
        if name == "predicted_vs_true":
            predictions, labels = finish.result_arrays(self.store, manifest)
            if predictions is None or labels is None:
                raise PlotNotFound(f"job {job_id} has no labelled predictions to plot", job_id=job_id, plot=name)
            return plots.to_png(plots.predicted_vs_true(predictions, labels))
        return plots.to_png(plots.duration_and_cost_vs_world_size(self._scaling_rows(job_id, manifest, document)))

    def _scaling_rows(self, job_id: str, manifest: Manifest, document: dict[str, Any]) -> list[dict[str, Any]]:
        """This job's table row and those of recent succeeded jobs like it (same function, data bucket,
        batch size and number of partitions: a sweep's other world sizes and partition sizes), so that
        the duration/cost plot of one job is a line, not a dot. At most :data:`SCALING_JOBS` are read;
        of jobs at the same partition size and world size only the newest is drawn."""
        rows = [report.seed_table_row(document)]
        seen = {(rows[0]["partition"], rows[0]["world_size"])}
        request = manifest.request
        for _, other_id in self.jobs.job_ids()[:SCALING_JOBS]:
            if other_id == job_id:
                continue
            try:
                _, other = self._manifest(other_id)
                if (other.state != JobState.SUCCEEDED or other.function != manifest.function
                        or other.request.data_bucket != request.data_bucket
                        or other.request.batch_size != request.batch_size
                        or len(other.partitions) != len(manifest.partitions)):
                    continue
                if (other.partition_label, other.world_size) in seen:
                    continue
                rows.append(report.seed_table_row(self._summary(other_id, other)))
                seen.add((other.partition_label, other.world_size))
            except (JobNotFound, ReportNotFound, ManifestError):  # gone, unreadable or never summarised: not drawn
                continue
        return rows

    def _finish(self, bucket: str, manifest: Manifest, ranks: dict[int, RankRecord]) -> str:
        """Write the job's summary (the runner's ``finish``); returns its ``s3://`` URI."""
        return finish.write_summary(self.patient, self.prices, manifest, ranks).key
