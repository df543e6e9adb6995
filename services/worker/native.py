"""``native`` mode: our inference over the rank's partitions, results and predictions to S3.

The order of work is what makes a warm invocation mostly inference: the first partition starts
downloading before the model is looked up (a cold start overlaps the two), each next partition
downloads while the current one is inferred, and the cancel marker is checked between batches
(a cancelled rank stops within about a second and writes nothing further). Results are written
under the rank's own keys only, and only by the attempt that took the rank's commit claim
(:meth:`.control.Markers.claim_commit`): another attempt alive at the same time (a speculative
backup, an orphan of a killed coordinator) stops as ``superseded`` and writes nothing.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np

from services.accuracy import redshift_metrics
from services.contracts import WorkerEvent, WorkerResult
from services.keys import labels_key, predictions_key, result_key
from services.logs import event as log_event
from services.s3store import S3Store
from services.worker.collective import summarise
from services.worker.control import Markers
from services.worker.errors import JobCancelled, Superseded
from services.worker.feed import PartitionFeed
from services.worker.model_cache import ModelCache, locate_checkpoint
from services.worker.outcome import configured_memory_mb
from services.worker.progress import ProgressWriter
from services.worker.rankreport import RankTally, peak_rss_mb, rank_document

log = logging.getLogger("cosmic.worker.native")


def run_native(job: WorkerEvent, store: S3Store, models: ModelCache, prefetch: int,
               runtime: dict[str, Any], invocation_started: float) -> WorkerResult:
    """Infer the rank's partitions and write its results; ``invocation_started`` (perf_counter)
    dates the invocation, for the ``elapsed_s`` a coordinator bills an orphaned attempt by."""
    tally = RankTally()
    markers = Markers(store, job)
    progress = ProgressWriter(store, job)  # the rank's phase and samples, for the dashboard and `cosmic status`
    progress.phase("downloading")
    predictions: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    with PartitionFeed(store, job.data_bucket, list(job.partitions), ahead=prefetch) as feed:
        progress.phase("loading_model")
        loaded = models.get(locate_checkpoint(store, job))
        tally.load_s, tally.model_download_s = loaded.load_s, loaded.download_s
        for fetched in feed:
            started = time.perf_counter()
            part = fetched.partition
            try:
                markers.stop_if_asked()
                progress.partition_started(len(part))
                predictions.append(loaded.predictor.predict(part.images, part.magnitudes, job.batch_size,
                                                            after_batch=progress.after_batch(markers.stop_if_asked)))
            except (JobCancelled, Superseded) as stopped:
                log_event(log, "stopped", during=fetched.key, partitions_done=len(tally.partitions_done),
                          reason=str(stopped))
                return _stopped(job, tally, loaded.cold, "cancelled" if isinstance(stopped, JobCancelled)
                                else "superseded")
            infer_s = time.perf_counter() - started
            if part.redshifts is not None:
                truths.append(part.redshifts.astype(np.float32, copy=False))
            progress.partition_done(len(part))
            tally.add_partition(fetched.key, len(part), job.batch_size, fetched.download_s, fetched.parse_s, infer_s)
            log_event(log, "partition_done", key=fetched.key, samples=len(part),
                      infer_s=round(infer_s, 3), samples_per_s=round(len(part) / infer_s, 1) if infer_s else None)
        tally.download_wait_s = feed.waited_s
    predicted = np.concatenate(predictions) if predictions else np.empty(0, dtype=np.float32)
    labelled = len(truths) == len(predictions) and bool(predictions)
    true = np.concatenate(truths) if labelled else None
    accuracy = redshift_metrics(predicted, true) if true is not None and true.size else None

    try:
        markers.claim_commit()  # the one attempt of this rank that writes its results
    except Superseded as stopped:
        log_event(log, "stopped", during="upload", reason=str(stopped))
        return _stopped(job, tally, loaded.cold, "superseded")
    progress.phase("uploading")
    started = time.perf_counter()
    written = [predictions_key(job.result_path, job.rank)]
    store.put(job.result_bucket, written[0], _npy(predicted))
    if true is not None:  # the coordinator's accuracy over all ranks needs them, and must not import torch
        written.append(labels_key(job.result_path, job.rank))
        store.put(job.result_bucket, written[-1], _npy(true))
    tally.upload_s = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    runtime = {**runtime, "memory_size_mb": configured_memory_mb(),
               "elapsed_s": round(time.perf_counter() - invocation_started, 4), "engine": loaded.predictor.engine,
               "precision": loaded.predictor.precision, "threads": loaded.predictor.threads,
               "checkpoint": f"s3://{loaded.checkpoint.bucket}/{loaded.checkpoint.key}", "checkpoint_etag": loaded.etag}
    document = rank_document(job, tally, status="succeeded", cold_start=loaded.cold, peak_mb=peak_mb,
                             runtime=runtime, accuracy=accuracy)
    started = time.perf_counter()
    store.put_json(job.result_bucket, result_key(job.result_path, job.rank), document)
    tally.upload_s += time.perf_counter() - started

    if job.rendezvous is not None:
        progress.phase("collective")
    started = time.perf_counter()
    collective = summarise(job, markers, predicted, true, tally, peak_mb)
    waited = {"collective": round(time.perf_counter() - started, 4)}  # the timeline's "collective wait"
    progress.phase("done")
    return WorkerResult(job_id=job.job_id, rank=job.rank, attempt=job.attempt, status="succeeded",
                        result_keys=[*written, result_key(job.result_path, job.rank)],
                        num_samples=tally.num_samples, partitions_done=tally.partitions_done,
                        timings_s={**tally.timings(), **waited}, peak_rss_mb=round(peak_mb, 1), cold_start=loaded.cold,
                        collective=collective, checks={"accuracy": accuracy} if accuracy else {})


def _stopped(job: WorkerEvent, tally: RankTally, cold: bool, status: str) -> WorkerResult:
    """What a cancelled or superseded rank answers: the partitions it finished, nothing written."""
    return WorkerResult(job_id=job.job_id, rank=job.rank, attempt=job.attempt, status=status, result_keys=[],
                        num_samples=tally.num_samples, partitions_done=tally.partitions_done,
                        timings_s=tally.timings(), peak_rss_mb=round(peak_rss_mb(), 1), cold_start=cold,
                        collective="skipped", checks={})


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
