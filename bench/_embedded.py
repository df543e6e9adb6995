"""Jobs on the embedded stack for the CPU-share and calibration benchmarks: run one, read what its ranks measured.

Each job is submitted to an in-process :class:`Coordinator` pointed at the stack (as ``job_overhead.py``
does) and followed to its end; :func:`run_job` returns its wall time, the REPORT figures of every rank
(duration, init, the CPU its sandbox had) and the rank documents the workers wrote (their phase timings).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.coordinator.payload import JobRequest
from services.coordinator.service import Coordinator
from services.coordinator.state import TERMINAL
from services.local.launch import start_runtime, stop_services
from services.local.stack import STATE_BUCKET, Stack, stack_dir

#: A job must end within this many seconds (the bench stops, saying so, rather than wait forever).
JOB_TIMEOUT_S = 600.0


@dataclass
class Finished:
    """One job as measured: wall time, the ranks' REPORT figures, their rank documents."""

    world_size: int
    memory_mb: int
    state: str
    wall_s: float
    reports: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    #: The job's summary (``summary.json``): cost, $ per million samples, samples per vCPU-second.
    summary: dict[str, Any]

    @property
    def slowest_rank_s(self) -> float:
        return max(report["duration_ms"] or 0 for report in self.reports) / 1e3

    @property
    def samples(self) -> int:
        return sum(int(document.get("num_samples") or 0) for document in self.documents)


def run_job(coordinator: Coordinator, stack: Stack, world_size: int, partitions: int, label: str,
            prefix: str = "25MB") -> Finished:
    """Submit one job over the first ``partitions`` partitions of ``prefix`` and wait for it."""
    result_path = f"result-bench/{label}-{os.getpid()}-{time.time_ns()}"
    request = JobRequest(bucket=STATE_BUCKET, file_limit=partitions, S3_object_name="Anomaly Detection",
                         result_path=result_path, data_bucket=STATE_BUCKET, data_prefix=prefix,
                         world_size=world_size)
    started = time.perf_counter()
    job_id, _, _ = coordinator.submit(request)
    deadline = started + JOB_TIMEOUT_S
    while (status := coordinator.status(job_id))["state"] not in TERMINAL:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job_id} ({label}) still {status['state']} after {JOB_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    wall = time.perf_counter() - started
    reports = [attempt for rank in status["ranks"] for attempt in rank["attempts"] if attempt["state"] == "succeeded"]
    client = stack.s3_client()
    try:
        documents = [json.loads(client.get_object(Bucket=STATE_BUCKET, Key=f"{result_path}/{rank}.json")["Body"].read())
                     for rank in range(world_size)] if status["state"] == "succeeded" else []
    finally:
        client.close()
    summary = dict(coordinator.summary(job_id)) if status["state"] == "succeeded" else {}
    return Finished(world_size, stack.memory_mb, status["state"], wall, reports, documents, summary)


@contextlib.contextmanager
def own_runtime(stack: Stack, port: int, memory_mb: int, sandboxes: int = 2) -> Iterator[None]:
    """A local Lambda runtime of the bench's own on ``port`` (where its coordinator calls Lambda), with
    ``memory_mb`` and each sandbox's CPU share reserved (``COSMIC_RUNTIME_CPU_RESERVE``): the machine is
    shared, and without a reservation the other work on it, not the share, would set the sandboxes' speed."""
    os.environ["COSMIC_RUNTIME_CPU_RESERVE"] = "1"
    runtime = start_runtime(stack_dir(), stack.s3.port, sandboxes, memory_mb, (port,))
    try:
        yield
    finally:
        stop_services([runtime])


def load_average() -> str:
    """The 1/5/15-minute load averages: the machine is shared, so every result says how busy it was."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
