"""How an attempt that did not succeed ended, told to a coordinator that may not be there to hear it.

A coordinator killed while ranks ran does not re-invoke them when it restarts: it waits for each
in-flight attempt's own word in S3 (:mod:`services.coordinator.orphans`). That the attempt started
is its progress record (:mod:`.progress`); a succeeded attempt's last word is its result document;
a failed, cancelled or superseded one writes this small object
(:func:`services.keys.outcome_key`), so the coordinator need not wait out the attempt's deadline to
learn how it ended. Best effort: an attempt that cannot write it (S3 unreachable, its sandbox
killed) is judged at its deadline instead. On AWS: one PUT per attempt that does not succeed.
"""

from __future__ import annotations

import logging
import os
import time

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


def record_outcome(store: S3Store, job: WorkerEvent, status: str, error: str | None, started: float) -> None:
    """Write how the attempt ended (``started``: ``time.perf_counter()`` when the invocation began)."""
    document = {"job_id": job.job_id, "rank": job.rank, "attempt": job.attempt, "status": status,
                "error": error[:2000] if error else None, "elapsed_s": round(time.perf_counter() - started, 4),
                "memory_size_mb": configured_memory_mb()}
    try:
        store.put_json(job.result_bucket, outcome_key(job.result_path, job.job_id, job.rank, job.attempt), document)
    except StoreError as exc:
        log_event(log, "outcome_unwritten", logging.WARNING, status=status, error=str(exc)[:200])
