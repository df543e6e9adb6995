"""The rank's result document: every legacy key, with honest meanings, plus what was missing.

Legacy readers (their Summarize step, their notebooks) keep working because every key they read
is still there; what the keys measure is now true: ``"total_cpu_time (seconds)"`` is the wall
time of the inference loop (not a profiler's sum of op CPU time) and ``"total_cpu_memory (MB)"``
is the invocation's peak resident memory (not a sum of allocations). ``MEANINGS`` goes into the
document so nobody has to guess.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, field
from typing import Any

from services.contracts import WorkerEvent
from services.memory import peak_rss_kib
from services.worker.data import BYTES_PER_SAMPLE

MEANINGS = {
    "total_cpu_time (seconds)": "wall time of the inference loop (same as infer_s)",
    "total_cpu_memory (MB)": "peak resident memory of the worker process during the invocation (peak_rss_mb)",
    "execution_time (seconds/batch)": "infer_s / num_batches",
    "throughput_bps": "input bytes (20,520 per sample) per second of inference",
    "load_s": "fetching the model from S3 and loading it (0 when the sandbox had it loaded)",
    "model_download_s": "the part of load_s spent fetching the model from S3 (0 when it was on local disk)",
}


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (reset per invocation by the local runtime), else ru_maxrss."""
    kib = peak_rss_kib()
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


@dataclass
class RankTally:
    """What a rank measured while it worked, filled in as partitions finish."""

    partitions_done: list[str] = field(default_factory=list)
    num_samples: int = 0
    num_batches: int = 0
    download_s: float = 0.0
    parse_s: float = 0.0
    download_wait_s: float = 0.0
    load_s: float = 0.0
    model_download_s: float = 0.0
    infer_s: float = 0.0
    upload_s: float = 0.0

    def add_partition(self, key: str, samples: int, batch_size: int, download_s: float, parse_s: float,
                      infer_s: float) -> None:
        self.partitions_done.append(key)
        self.num_samples += samples
        self.num_batches += math.ceil(samples / batch_size)
        self.download_s += download_s
        self.parse_s += parse_s
        self.infer_s += infer_s

    def timings(self) -> dict[str, float]:
        return {name: round(getattr(self, f"{name}_s"), 4)
                for name in ("download", "parse", "download_wait", "load", "model_download", "infer", "upload")}


def rank_document(job: WorkerEvent, tally: RankTally, *, status: str, cold_start: bool, peak_mb: float,
                  runtime: dict[str, Any], accuracy: dict[str, float] | None) -> dict[str, Any]:
    """The ``{result_path}/{rank}.json`` document."""
    infer_s = tally.infer_s
    rate = tally.num_samples / infer_s if infer_s > 0 else 0.0
    return {
        # the legacy keys, in their order
        "total_cpu_time (seconds)": round(infer_s, 4),
        "total_cpu_memory (MB)": round(peak_mb, 1),
        "execution_time (seconds/batch)": round(infer_s / tally.num_batches, 6) if tally.num_batches else 0.0,
        "num_batches": tally.num_batches,
        "batch_size": job.batch_size,
        "device": "cpu",
        "throughput_bps": round(rate * BYTES_PER_SAMPLE, 1),
        "sample_persec": round(rate, 2),
        "result_path": job.result_path,
        "data_path": list(job.partitions),
        # what the legacy document lacked
        "job_id": job.job_id,
        "rank": job.rank,
        "world_size": job.world_size,
        "attempt": job.attempt,
        "status": status,
        "partitions_done": tally.partitions_done,
        "num_samples": tally.num_samples,
        **{f"{name}_s": value for name, value in tally.timings().items()},
        "cold_start": cold_start,
        "peak_rss_mb": round(peak_mb, 1),
        "runtime": runtime,
        "accuracy": accuracy,
        "meanings": MEANINGS,
    }
