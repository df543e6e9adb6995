"""The job runners a coordinator holds in memory: every running job's, and its most recent finished ones'.

Everything a job is lives in S3; a runner in memory only makes the job cheap to read: its rank
records at hand, its partitions per rank made once. A finished job's runner still holds its
manifest and every rank's record, tens of MB at 10,000 ranks, so only the :data:`FINISHED_KEPT`
most recent stay, and a long-lived coordinator does not grow with every job: an older job is read
from S3 (its compacted ranks), like a job another coordinator ran.
"""

from __future__ import annotations

import threading

from services.contracts import WorkerEvent
from services.coordinator.manifest import Manifest
from services.coordinator.runner import JobRunner
from services.coordinator.state import TERMINAL

#: Finished jobs whose runner stays in memory.
FINISHED_KEPT = 8


def finished_beyond(runners: dict[str, JobRunner], kept: int) -> list[str]:
    """The job ids of finished runners older than the ``kept`` most recent finished ones (``runners``
    in the order they started); a runner whose thread has not started yet is not finished."""
    finished = [job_id for job_id, runner in runners.items()
                if runner.thread.ident is not None and not runner.thread.is_alive()]
    return finished[:max(0, len(finished) - kept)]


class Runners:
    """The runners by job id, in the order they started; thread-safe."""

    def __init__(self, finished_kept: int = FINISHED_KEPT) -> None:
        self.finished_kept = finished_kept
        self._runners: dict[str, JobRunner] = {}
        self._shares: dict[str, tuple[tuple[WorkerEvent, ...], dict[int, int]]] = {}  # :meth:`partitions_per_rank`
        self._lock = threading.Lock()

    def add(self, runner: JobRunner) -> None:
        """Hold ``runner`` (a retried job's new one replaces its old), dropping the finished ones
        beyond the most recent :attr:`finished_kept`."""
        with self._lock:
            self._runners.pop(runner.job_id, None)  # the newest, whatever it replaces
            self._runners[runner.job_id] = runner
            for finished in finished_beyond(self._runners, self.finished_kept):
                del self._runners[finished]
                self._shares.pop(finished, None)

    def get(self, job_id: str) -> JobRunner | None:
        return self._runners.get(job_id)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._runners

    def running(self) -> int:
        """How many jobs are running here."""
        with self._lock:
            return sum(1 for runner in self._runners.values() if runner.thread.is_alive())

    def partitions_per_rank(self, job_id: str, manifest: Manifest) -> dict[int, int]:
        """Each rank's partition count (the progress figures'): made once per running job, whose
        events never change, not at every poll of its status (a third of it at 10,000 ranks)."""
        if manifest.state in TERMINAL or job_id not in self._runners:
            self._shares.pop(job_id, None)
            return {event.rank: len(event.partitions) for event in manifest.events}
        cached = self._shares.get(job_id)
        if cached is None or cached[0] is not manifest.events:
            cached = self._shares[job_id] = (manifest.events,
                                             {event.rank: len(event.partitions) for event in manifest.events})
        return cached[1]
