"""A finished job's summary: gather the ranks' results from S3 and write ``combined_data.json`` and
``summary.json`` beside them. Used by the coordinator and by the Step Functions summarize step."""

from __future__ import annotations

import io
import os
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from services.aws import aws_region, lambda_endpoint
from services.contracts import JobState, RankState
from services.coordinator import summary
from services.coordinator.manifest import Manifest
from services.coordinator.pricing import Prices
from services.coordinator.state import RankRecord
from services.keys import collective_summary_key, labels_key, predictions_key, result_key
from services.s3store import S3Store, StoreError

T = TypeVar("T")
#: Concurrent S3 reads while gathering results (botocore's pool is sized for it in S3Store).
READERS = 8


def _present(store: S3Store, bucket: str, result_path: str) -> set[str]:
    """Every key under the result path, from one listing: a key not in it is not read at all. A job
    of 10,000 ranks that wrote nothing (failed, cancelled, a no-op handler) cost 20,000 GETs that
    all missed; one that wrote everything costs a listing of a page per 1,000 keys more."""
    return set(store.keys(bucket, f"{result_path}/"))


def _npy(store: S3Store, bucket: str, key: str, present: set[str] | None = None) -> np.ndarray | None:
    if present is not None and key not in present:
        return None
    try:
        raw = store.get(bucket, key).data
    except StoreError as exc:
        if exc.code is None:  # S3 did not answer: not the same as a rank that wrote no array
            raise
        return None
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _parallel(function: Callable[[int], T], count: int) -> list[T]:
    """``function(0..count-1)`` on a pool: thousands of small S3 reads are latency, not work."""
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return list(pool.map(function, range(count)))


def result_arrays(store: S3Store, manifest: Manifest, finished: set[int] | None = None,
                  present: set[str] | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The predictions of every rank (or of the ``finished`` ones: a rank that did not finish may
    have left an older job's arrays at the same path), in rank order, and the labels when all have
    them; ``present`` is every key under the result path (:func:`_present`), listed when not given."""
    bucket, path = manifest.request.data_bucket, manifest.request.result_path
    ranks = sorted(finished) if finished is not None else list(range(manifest.world_size))
    present = present if present is not None else _present(store, bucket, path)

    def read(rank: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        predicted = _npy(store, bucket, predictions_key(path, rank), present)
        return predicted, (_npy(store, bucket, labels_key(path, rank), present) if predicted is not None else None)

    pairs = [pair for pair in _parallel(lambda index: read(ranks[index]), len(ranks)) if pair[0] is not None]
    predictions = [predicted for predicted, _ in pairs]
    labels = [label for _, label in pairs]
    if not predictions:
        return None, None
    if any(label is None for label in labels):
        return np.concatenate(predictions), None
    return np.concatenate(predictions), np.concatenate(labels)  # type: ignore[arg-type]


def invocations(ranks: dict[int, RankRecord]) -> list[summary.Invocation]:
    """The attempts Lambda reported on (one lost in transport has no REPORT and bills nothing we know)."""
    found = []
    for record in ranks.values():
        for attempt in record.attempts:
            report = attempt.report or {}
            if report.get("duration_ms") is None or attempt.state not in summary.STATES:
                continue
            found.append(summary.Invocation(
                rank=record.rank, attempt=attempt.attempt, state=attempt.state, started_at=attempt.started_at,
                ended_at=attempt.ended_at or attempt.started_at, duration_ms=float(report["duration_ms"] or 0),
                billed_duration_ms=float(report.get("billed_duration_ms") or 0),
                memory_size_mb=float(report.get("memory_size_mb") or 128),
                max_memory_used_mb=float(report.get("max_memory_used_mb") or 0), error=attempt.error,
                init_duration_ms=report.get("init_duration_ms"), cpu_vcpus=report.get("cpu_vcpus"),
                cpu_enforced_by=report.get("cpu_enforced_by")))
    return found


def ending_state(manifest: Manifest, ranks: dict[int, RankRecord]) -> str:
    """How the job ended, as its manifest will say once the summary is written."""
    if manifest.cancel_requested:
        return JobState.CANCELLED
    states = {record.state for record in ranks.values()}
    if RankState.FAILED in states or manifest.error:
        return JobState.FAILED
    if RankState.CANCELLED in states or RankState.PENDING in states:
        return JobState.CANCELLED
    return JobState.SUCCEEDED


#: Host names that mean the Lambda endpoint is this machine: its ranks share this machine's CPUs.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def execution(invocations: list[summary.Invocation], documents: list[dict[str, Any]],
              endpoint: str | None = None) -> dict[str, Any]:
    """Where the ranks ran, for the report's shared-CPU note (the summary's ``execution``).

    ``local``: the Lambda endpoint is on loopback, so the ranks ran on this machine and ``host_cpus``
    is theirs; ``ranks_at_once``: the most attempts whose spans overlapped; ``threads_per_rank``: the
    most threads a rank's inference used (its result document's ``runtime.threads``).
    """
    endpoint = endpoint if endpoint is not None else lambda_endpoint()
    local = bool(endpoint) and urllib.parse.urlsplit(endpoint).hostname in LOOPBACK
    edges = sorted([(inv.started_at, 1) for inv in invocations] + [(inv.ended_at, -1) for inv in invocations],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same instant
    running = at_once = 0
    for _, step in edges:
        running += step
        at_once = max(at_once, running)
    threads = [doc.get("runtime", {}).get("threads") for doc in documents if isinstance(doc.get("runtime"), dict)]
    threads = [count for count in threads if isinstance(count, int) and count > 0]
    return {"local": local, "host_cpus": os.cpu_count() if local else None, "ranks_at_once": at_once,
            "threads_per_rank": max(threads, default=None)}


@dataclass(frozen=True)
class WrittenSummary:
    """What :func:`write_summary` wrote: the summary's ``s3://`` URI and the document itself."""

    key: str
    document: summary.Summary


def write_summary(store: S3Store, prices: Prices, manifest: Manifest, ranks: dict[int, RankRecord]) -> WrittenSummary:
    """Write ``combined_data.json`` and ``summary.json`` beside the ranks' results."""
    data_bucket, result_path = manifest.request.data_bucket, manifest.request.result_path

    # a rank without a record is taken as finished (Step Functions knows no records: its Map succeeded)
    finished = sorted(rank for rank in range(manifest.world_size)
                      if rank not in ranks or ranks[rank].state == RankState.SUCCEEDED)
    present = _present(store, data_bucket, result_path)
    wanted = [key for key in (result_key(result_path, rank) for rank in finished) if key in present]
    documents = [document for document in _parallel(lambda index: store.get_json(data_bucket, wanted[index]),
                                                    len(wanted))
                 if isinstance(document, dict) and document.get("job_id", manifest.job_id) == manifest.job_id]
    predictions, labels = result_arrays(store, manifest, set(finished), present)
    partitions = manifest.partitions
    if len(finished) < manifest.world_size:  # cancelled or failed: count only what the finished ranks read
        read_keys = {key for event in manifest.events if event.rank in finished for key in event.partitions}
        partitions = [partition for partition in manifest.partitions if partition.key in read_keys]
    collective = (store.get_json(data_bucket, collective_summary_key(result_path))
                  if manifest.communicator and collective_summary_key(result_path) in present else None)
    if isinstance(collective, dict) and collective.get("job_id") != manifest.job_id:
        collective = None  # an older job's summary at the same path
    facts = summary.JobFacts(
        job_id=manifest.job_id, function=manifest.function,
        region=aws_region(),
        world_size=manifest.world_size, partition_label=manifest.partition_label,
        partitions=len(partitions), input_bytes=sum(partition.size for partition in partitions),
        submitted_at=manifest.submitted_at, finished_at=time.time(), result_path=result_path,
        # per rank: its partitions and the checkpoint's HEAD are GETs; predictions, labels, result are PUTs
        s3_gets=sum(len(e.partitions) for e in manifest.events) + 2 * manifest.world_size,
        s3_puts=3 * manifest.world_size, warnings=manifest.warnings, state=ending_state(manifest, ranks))
    attempts = invocations(ranks)
    document = summary.summarize(facts, attempts, documents, predictions, labels, collective, prices)
    document["execution"] = execution(attempts, documents)  # type: ignore[typeddict-unknown-key]
    store.put_json(data_bucket, f"{result_path}/combined_data.json", summary.combined_data(documents))
    store.put_json(data_bucket, f"{result_path}/summary.json", document)
    return WrittenSummary(f"s3://{data_bucket}/{result_path}/summary.json", document)
