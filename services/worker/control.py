"""The coordinator's markers as a rank sees them: cancel (stop now) and abort (skip the collective);
and the rank's commit claim, which decides which of two live attempts of a rank writes its results.

Checked from the per-batch hook, so a cancelled rank stops within about a second of work, and by a
watcher thread while the rank is in the collective, so that a rank whose peer failed leaves it at
once instead of waiting out its deadline. Each check is one S3 request, made at most once per
``interval`` seconds: on AWS about $0.0004 per 1,000 (a 30 s rank makes ~30 per marker).

The commit claim (:func:`services.keys.commit_key`) is created with a conditional write just before
a rank uploads: the attempt that creates it writes the results, any other attempt of the rank
alive at the same time finds it taken and stops as ``superseded``, having written nothing, so an
older attempt can never overwrite a newer one's results, nor a loser a winner's. In a job that runs
speculative backups the per-batch hook looks at the claim too, so the slower attempt stops within
about a second of the faster one finishing instead of at its own upload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from services import logs
from services.contracts import WorkerEvent
from services.keys import commit_key
from services.logs import event as log_event
from services.s3store import S3Store, StoreError
from services.worker.errors import JobCancelled, Superseded

log = logging.getLogger("cosmic.worker.control")

#: Seconds between two looks at a marker.
CHECK_INTERVAL_S = 1.0


class Markers:
    """One rank's view of its job's markers; a marker once seen stays seen."""

    def __init__(self, store: S3Store, job: WorkerEvent, interval: float = CHECK_INTERVAL_S) -> None:
        self.store, self.job, self.interval = store, job, interval
        self._next_look = 0.0
        self.cancel_reason: str | None = None
        self.abort: dict[str, Any] | None = None
        #: The attempt holding the rank's commit claim, once one other than this one is seen.
        self.superseded_by: int | None = None

    def _read(self, key: str | None) -> dict[str, Any] | None:
        if key is None:
            return None
        try:
            document = self.store.get_json(self.job.result_bucket, key)
        except StoreError as exc:
            if exc.code is None and not exc.unanswered:
                return {"reason": "marker present"}  # read, but not JSON: still a marker
            log_event(log, "marker_unreadable", logging.WARNING, key=key, error=str(exc))
            return None  # S3 hiccup: not a reason to stop; look again next time
        if document is None:
            return None
        return document if isinstance(document, dict) else {"reason": "marker present"}

    def look(self, force: bool = False, abort: bool = True) -> None:
        """Read the markers (``abort``: the abort marker too; the commit claim in a speculative
        job), unless the last look was under ``interval`` ago."""
        now = time.monotonic()
        if not force and now < self._next_look:
            return
        self._next_look = now + self.interval
        if self.cancel_reason is None and (cancel := self._read(self.job.cancel_key)) is not None:
            self.cancel_reason = str(cancel.get("reason") or "cancelled")
            log_event(log, "cancel_seen", reason=self.cancel_reason)
        if abort and self.abort is None and (found := self._read(self.job.abort_key)) is not None:
            self.abort = found
            log_event(log, "abort_seen", failed_rank=found.get("rank"), reason=found.get("reason"))
        if self.job.speculative and self.superseded_by is None:
            holder = self._claim_holder()
            if holder is not None and holder != self.job.attempt:
                self.superseded_by = holder
                log_event(log, "superseded_seen", holder=holder)

    def stop_if_asked(self) -> None:
        """The per-batch hook: raises JobCancelled once the cancel marker is there, Superseded once
        another attempt holds the commit claim (looked at in speculative jobs only). It skips the
        abort marker: that matters to the collective alone, which looks for itself."""
        self.look(abort=False)
        if self.cancel_reason is not None:
            raise JobCancelled(self.cancel_reason)
        if self.superseded_by is not None:
            raise Superseded(self.superseded_by)

    def claim_commit(self) -> None:
        """Take the rank's commit claim before writing any result; Superseded when another attempt
        has it. A claim this attempt already holds is kept (a retried call after a lost answer)."""
        key = commit_key(self.job.result_path, self.job.job_id, self.job.rank)
        body = json.dumps({"attempt": self.job.attempt, "at": time.time()}).encode()
        if self.store.put_new(self.job.result_bucket, key, body):
            return
        holder = self._claim_holder()
        if holder != self.job.attempt:
            log_event(log, "commit_lost", holder=holder)
            raise Superseded(holder)

    def _claim_holder(self) -> int | None:
        """The attempt number the rank's commit claim names, None when there is none (or unreadable)."""
        claim = self._read(commit_key(self.job.result_path, self.job.job_id, self.job.rank))
        attempt = claim.get("attempt") if claim is not None else None
        return attempt if isinstance(attempt, int) else None

    def collective_doomed(self) -> tuple[str, int] | None:
        """Why this rank must not wait in the collective (reason, failed rank), or None."""
        if self.cancel_reason is not None:
            return f"the job was cancelled: {self.cancel_reason}", self.job.rank
        if self.abort is not None:
            failed = self.abort.get("rank")
            return str(self.abort.get("reason") or "a rank failed"), int(failed) if failed is not None else -1
        return None


class Watcher:
    """While a collective runs: look at the markers every ``interval`` and call ``stop`` once
    when one says the collective is doomed. A context manager; the thread ends with the block."""

    def __init__(self, markers: Markers, stop: Callable[[str, int], None]) -> None:
        self.markers, self.stop = markers, stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._done.wait(self.markers.interval):
            self.markers.look(force=True)
            doomed = self.markers.collective_doomed()
            if doomed is not None:
                log_event(log, "collective_interrupted", reason=doomed[0], failed_rank=doomed[1])
                self.stop(*doomed)
                return

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=logs.carry(self._watch), name="markers", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
