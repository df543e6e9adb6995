"""The job's summary computed among the workers: one allreduce of sums, one gather for the NMAD.

After every rank has written its own results, the ranks of a job (linked through the rendezvous
server by :class:`~services.rendezvous.comm.Communicator`) sum their counts, timings and error
sums, and rank 0 writes ``{result_path}/summary_collective.json``, as the FMI variant of the
legacy workflow did with its reduce. The median behind NMAD does not decompose into sums, so the
normalised residuals (4 bytes per sample) are gathered to rank 0.

It is best effort with its own deadline: a rank whose peers never come still succeeds and
reports the collective as failed; a retried attempt skips it (its peers are long gone).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from services.accuracy import OUTLIER_THRESHOLD
from services.contracts import WorkerEvent, split_endpoint
from services.keys import collective_summary_key
from services.logs import event as log_event
from services.s3store import StoreError
from services.worker.control import Markers, Watcher
from services.worker.rankreport import RankTally

log = logging.getLogger("cosmic.worker.collective")
#: The allreduced vector, in this order.
SUMS = ("samples", "labelled", "abs_error", "squared_error", "dz", "outliers", "true", "true_squared",
        "infer_s", "peak_rss_mb_max")


def local_sums(predicted: np.ndarray, true: np.ndarray | None, tally: RankTally) -> tuple[np.ndarray, np.ndarray]:
    """This rank's row of sums, and its normalised residuals dz (empty without labels)."""
    row = np.zeros(len(SUMS), dtype=np.float64)
    row[0], row[8] = predicted.size, tally.infer_s
    dz = np.empty(0, dtype=np.float32)
    if true is not None and true.size:
        truth = true.astype(np.float64)
        error = predicted.astype(np.float64) - truth
        dz64 = error / (1 + truth)
        row[1:8] = (truth.size, np.abs(error).sum(), (error**2).sum(), dz64.sum(),
                    (np.abs(dz64) > OUTLIER_THRESHOLD).sum(), truth.sum(), (truth**2).sum())
        dz = dz64.astype(np.float32)
    return row, dz


def global_summary(totals: np.ndarray, residuals: list[np.ndarray], world_size: int) -> dict[str, Any]:
    """The job's metrics from the summed rows and every rank's residuals."""
    sums = dict(zip(SUMS, (float(v) for v in totals), strict=True))
    summary: dict[str, Any] = {"world_size": world_size, "num_samples": int(sums["samples"]),
                               "infer_s_total": round(sums["infer_s"], 4),
                               "peak_rss_mb_max": round(sums["peak_rss_mb_max"], 1)}
    labelled = sums["labelled"]
    if labelled:
        dz = np.concatenate(residuals).astype(np.float64)
        variance_sum = sums["true_squared"] - sums["true"] ** 2 / labelled
        summary["accuracy"] = {
            "mae": sums["abs_error"] / labelled,
            "mse": sums["squared_error"] / labelled,
            "bias": sums["dz"] / labelled,
            "nmad": float(1.4826 * np.median(np.abs(dz - np.median(dz)))),
            "r2": 1 - sums["squared_error"] / variance_sum if variance_sum > 0 else float("nan"),
            "outlier_fraction": sums["outliers"] / labelled,
            "count": labelled,
        }
    return summary


def summarise(job: WorkerEvent, markers: Markers, predicted: np.ndarray, true: np.ndarray | None,
              tally: RankTally, peak_mb: float) -> str:
    """Run the collective; returns ``done``, ``skipped...`` or ``failed: <reason>``, never raises.

    The coordinator's markers decide whether to wait for peers at all: after an abort (a rank
    failed) or a cancel the collective cannot complete, so a rank skips it, or leaves it at once.
    """
    if job.rendezvous is None or job.comm_name is None:
        return "skipped"
    if job.attempt > 1:
        return "skipped"  # a retried rank's peers finished long ago; waiting for them would only time out
    markers.look(force=True)
    doomed = markers.collective_doomed()
    if doomed is not None:
        log_event(log, "collective_skipped", reason=doomed[0], failed_rank=doomed[1])
        return f"skipped: {doomed[0]}"
    store = markers.store
    from services.rendezvous.comm import Communicator  # lazily: only ranks with a rendezvous pay for it
    from services.rendezvous.errors import CommError, RendezvousError

    host, port = split_endpoint(job.rendezvous)
    started = time.perf_counter()
    row, dz = local_sums(predicted, true, tally)
    row[9] = peak_mb
    try:
        with Communicator(job.rank, job.world_size, job.comm_name, host, port,
                          timeout=job.collective_timeout_s) as comm, Watcher(markers, comm.interrupt):
            totals = comm.allreduce(row[:9])
            peak = comm.allreduce(row[9:], op="max")
            residuals = comm.gather(dz, root=0)
            if job.rank == 0:
                assert residuals is not None
                summary = global_summary(np.concatenate([totals, peak]), residuals, job.world_size)
                summary.update(job_id=job.job_id, collective_s=round(time.perf_counter() - started, 4))
                store.put_json(job.result_bucket, collective_summary_key(job.result_path), summary)
    except (CommError, RendezvousError, OSError, StoreError) as exc:
        log_event(log, "collective_failed", logging.WARNING, error=str(exc))
        return f"failed: {type(exc).__name__}: {exc}"
    log_event(log, "collective_done", seconds=round(time.perf_counter() - started, 3))
    return "done"
