"""The Lambda entry point: ``services.worker.handler.handler(event, context)``.

One invocation is one rank of a job. The event is validated before any work
(:func:`services.contracts.parse_event`; a bad one is a function error naming the field), then
the event's ``mode`` runs: ``native`` inference (:mod:`.native`), the legacy ``script``
(:mod:`.legacy_script`) or the deployment ``selftest`` (:mod:`.selftest`). What lives across warm
invocations of a sandbox: the S3 client and its connections, and the loaded model.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()

import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from services import logs  # noqa: E402
from services.contracts import WorkerEvent, parse_event  # noqa: E402
from services.logs import event as log_event  # noqa: E402
from services.s3store import S3Store  # noqa: E402
from services.worker import settings as worker_settings  # noqa: E402
from services.worker.legacy_script import run_script  # noqa: E402
from services.worker.model_cache import ModelCache  # noqa: E402
from services.worker.native import run_native  # noqa: E402
from services.worker.outcome import record_outcome  # noqa: E402
from services.worker.selftest import run_selftest  # noqa: E402

#: Seconds the imports took in this sandbox: part of every cold start (torch is not among them:
#: the native path imports it only to run a checkpoint that has no export).
IMPORT_S = time.perf_counter() - _IMPORT_STARTED
log = logging.getLogger("cosmic.worker.handler")


class _Sandbox:
    """What this process keeps between invocations, made on the first one."""

    def __init__(self) -> None:
        logs.configure()
        self.settings = worker_settings.load()
        self.store = S3Store()
        self.models = ModelCache(self.store, Path(self.settings.scratch_dir), self.settings.precision,
                                 self.settings.engine)
        self.invocations = 0


_sandbox: _Sandbox | None = None


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Run one rank; returns :class:`~services.contracts.WorkerResult` as a dict, raises on failure.

    Every line logged during the invocation, from any module and from the threads it hands work
    to, carries ``job_id``, ``rank``, ``attempt``, ``request_id`` and ``cold_start`` (the sandbox's
    first invocation, as Lambda counts cold starts); they are gone once it returns or raises.
    """
    global _sandbox
    job = parse_event(event)  # before any work: a bad event costs nothing
    started = time.perf_counter()
    if _sandbox is None:
        _sandbox = _Sandbox()
    sandbox = _sandbox
    sandbox.invocations += 1
    request_id = getattr(context, "aws_request_id", None)
    with logs.with_keys(job_id=job.job_id, rank=job.rank, attempt=job.attempt, request_id=request_id,
                        cold_start=sandbox.invocations == 1):
        return _invoke(job, sandbox, request_id, started)


def _invoke(job: WorkerEvent, sandbox: _Sandbox, request_id: str | None, started: float) -> dict[str, Any]:
    log_event(log, "invocation_start", mode=job.mode, partitions=len(job.partitions))
    if job.mode == "script":
        result = run_script(job, sandbox.store, Path(sandbox.settings.scratch_dir),
                            sandbox.settings.script_timeout)
    elif job.mode == "selftest":
        result = run_selftest(job, sandbox.store)
    else:
        runtime = {"import_s": round(IMPORT_S, 3), "sandbox_invocation": sandbox.invocations,
                   "request_id": request_id}
        try:
            result = run_native(job, sandbox.store, sandbox.models, sandbox.settings.prefetch, runtime, started)
        except Exception as exc:  # the coordinator may not be there to hear it: say it in S3 too
            record_outcome(sandbox.store, job, "failed", f"{type(exc).__name__}: {exc}", started)
            raise
        if result.status != "succeeded":
            record_outcome(sandbox.store, job, result.status, None, started)
    result.timings_s["total"] = round(time.perf_counter() - started, 4)
    if sandbox.invocations == 1:
        result.timings_s["import"] = round(IMPORT_S, 4)  # paid once per sandbox, before this invocation
    log_event(log, "invocation_done", status=result.status, samples=result.num_samples,
              seconds=result.timings_s["total"], model_loaded=result.cold_start, peak_rss_mb=result.peak_rss_mb)
    return result.to_dict()
