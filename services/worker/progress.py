"""The rank's progress record in S3 (:class:`services.progress.RankProgress`), kept cheap.

One small JSON object per rank under the job's result path (:func:`services.keys.progress_key`),
the prefix the worker role may write on AWS. It is rewritten when the rank enters a phase for the
first time (six at most) and otherwise at most every :data:`INTERVAL_S` seconds, from the per-batch
hook: a rank inferring for 30 s writes at most 6 + 10 = 16 times. On AWS a PUT costs $0.005 per
1,000, so 1,000 such ranks cost at most $0.08 in progress writes (README, "Live progress"). Writing
is best effort: S3 refusing a progress write is logged and never fails the rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.contracts import WorkerEvent
from services.keys import progress_key
from services.logs import event as log_event
from services.progress import RankProgress
from services.s3store import S3Store, StoreError

log = logging.getLogger("cosmic.worker.progress")

#: Seconds between two writes of the record within one phase.
INTERVAL_S = 3.0


class ProgressWriter:
    """One attempt's progress record; every method is cheap unless it decides to write."""

    def __init__(self, store: S3Store, job: WorkerEvent, interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.job, self.interval, self.clock = store, job, interval, clock
        self.key = progress_key(job.result_path, job.job_id, job.rank)
        self.started_at = clock()
        self.phase_name = ""
        self.phases: dict[str, float] = {}
        self.samples_done = 0
        self._finished_samples = 0  # in partitions already done
        self._seen_samples = 0  # in partitions read so far (done or under way)
        self._seen_partitions = 0
        self.partitions_done = 0
        self._last_write = float("-inf")
        self.writes = 0

    def phase(self, name: str) -> None:
        """Enter ``name``; written at once the first time, else with the next interval's write."""
        if name == self.phase_name:
            return
        first = name not in self.phases
        self.phase_name = name
        if first:
            self.phases[name] = self.clock()
        self._write(force=first)

    def partition_started(self, samples: int) -> None:
        """A partition of ``samples`` is read and about to be inferred."""
        self._seen_samples += samples
        self._seen_partitions += 1
        self.phase("inferring")

    def after_batch(self, then: Callable[[], None]) -> Callable[[int], None]:
        """The predictor's per-batch hook: note the samples done in this partition, then ``then()``
        (the cancel check, which may raise)."""

        def hook(done_in_partition: int) -> None:
            self.samples_done = self._finished_samples + done_in_partition
            self._write()
            then()

        return hook

    def partition_done(self, samples: int) -> None:
        self._finished_samples += samples
        self.samples_done = self._finished_samples
        self.partitions_done += 1

    def samples_expected(self) -> int | None:
        """The rank's samples: the mean of the partitions read so far times its share; exact at the last."""
        if not self._seen_partitions:
            return None
        return round(self._seen_samples / self._seen_partitions * len(self.job.partitions))

    def record(self) -> RankProgress:
        return RankProgress(job_id=self.job.job_id, rank=self.job.rank, attempt=self.job.attempt,
                            phase=self.phase_name, samples_done=self.samples_done,
                            samples_expected=self.samples_expected(), partitions_done=self.partitions_done,
                            partitions_total=len(self.job.partitions), started_at=self.started_at,
                            updated_at=self.clock(), phases=dict(self.phases))

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.phase_name or (not force and now - self._last_write < self.interval):
            return
        self._last_write = now
        try:
            self.store.put_json(self.job.result_bucket, self.key, self.record().to_dict())
            self.writes += 1
        except StoreError as exc:  # progress is for people watching: never a reason to fail the rank
            log_event(log, "progress_unwritten", logging.WARNING, key=self.key, error=str(exc)[:200])
