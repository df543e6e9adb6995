"""What an attempt tells a coordinator that may not be there to hear it: that it started, and how
it ended when it did not succeed.

A coordinator killed while ranks ran does not re-invoke them when it restarts: it waits for each
in-flight attempt's own word in S3 (:mod:`services.coordinator.orphans`). An attempt writes
``running`` to its outcome object (:func:`services.keys.outcome_key`) as it starts, from a thread,
so the restarted coordinator can tell an attempt that is under way from one whose call was never
sent; a succeeded attempt's last word is its result document; a failed, cancelled or superseded one
overwrites the outcome object with how it ended, so the coordinator need not wait out the attempt's
deadline to learn it. Best effort: an attempt that cannot write (S3 unreachable, its sandbox
killed) is judged at its deadline instead. On AWS: one PUT per attempt, two when it does not
succeed ($0.005 per 1,000).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from services import logs
from services.contracts import WorkerEvent
from services.keys import outcome_key
from services.logs import event as log_event
from services.s3store import S3Store, StoreError

log = logging.getLogger("cosmic.worker.outcome")


def configured_memory_mb() -> int | None:
    """The function's configured memory, as Lambda (and the local runtime) tell the sandbox: what
    a coordinator bills an attempt at when the attempt's REPORT line never reached it."""
    value = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    return int(value) if value.isdigit() else None


class AttemptWord:
    """The attempt's outcome object: ``running`` written at once from a thread (the invocation does
    not wait for it), then, when the attempt does not succeed, how it ended (after the first)."""

    def __init__(self, store: S3Store, job: WorkerEvent, started: float) -> None:
        self.store, self.job, self.started = store, job, started
        self._first = threading.Thread(target=logs.carry(self._write), args=("running", None),
                                       name="attempt-word", daemon=True)
        self._first.start()

    def ended(self, status: str, error: str | None) -> None:
        """Say how the attempt ended (``failed``, ``cancelled``, ``superseded``)."""
        self._first.join()
        self._write(status, error)

    def close(self) -> None:
        self._first.join()

    def _write(self, status: str, error: str | None) -> None:
        job = self.job
        document = {"job_id": job.job_id, "rank": job.rank, "attempt": job.attempt, "status": status,
                    "error": error[:2000] if error else None,
                    "elapsed_s": round(time.perf_counter() - self.started, 4), "memory_size_mb": configured_memory_mb()}
        try:
            self.store.put_json(job.result_bucket, outcome_key(job.result_path, job.job_id, job.rank, job.attempt),
                                document)
        except StoreError as exc:
            log_event(log, "outcome_unwritten", logging.WARNING, status=status, error=str(exc)[:200])
