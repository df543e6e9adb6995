"""The journal of a job's rank records: changes coalesced into one S3 segment per flush.

Segments live at ``.cosmic/jobs/{job_id}/journal/{t}.json`` (:func:`.state.journal_prefix`) and are
read back in order by :meth:`.state.JobStore.ranks`; a job that ends compacts them into one file.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from services import logs
from services.coordinator.state import JobStore, RankRecord, journal_prefix

log = logging.getLogger("cosmic.coordinator.journal")
#: Seconds between journal flushes: the most record history a kill -9 can lose (starts are never lost).
JOURNAL_INTERVAL_S = 0.25


class RankJournal:
    """Coalesces rank-record changes of one job into a journal segment per flush, from one thread.

    Most changes may wait for the next flush (``JOURNAL_INTERVAL_S``). An attempt about to be
    invoked may not: a restarted coordinator must know it may be in flight, or it would run the rank
    a second time. :meth:`wait_written` returns only once a segment holding the change is in S3,
    and asks for a flush at once; the ranks of a wave that ask meanwhile share the
    next segment (a group commit), so a wave costs a few PUTs, not one per rank.
    """

    def __init__(self, jobs: JobStore, bucket: str, job_id: str, interval_s: float = JOURNAL_INTERVAL_S) -> None:
        self._jobs, self._bucket, self._job_id, self._interval = jobs, bucket, job_id, interval_s
        self._dirty: dict[int, dict[str, Any]] = {}
        self._lock = threading.Condition()
        self._noted = 0  # changes noted so far ...
        self._written = 0  # ... and how many of them are in S3
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=logs.carry(self._loop), name=f"journal-{job_id[-6:]}", daemon=True)
        self._thread.start()

    def record(self, record: RankRecord) -> int:
        """Note the record's current state (a snapshot: later changes need another call); returns
        the change's number, for :meth:`wait_written`."""
        snapshot = record.to_dict()
        with self._lock:
            self._dirty[record.rank] = snapshot
            self._noted += 1
            return self._noted

    def wait_written(self, change: int) -> None:
        """Return once change number ``change`` is in S3 (or the journal is closed), asking for a
        flush now: callers that wait meanwhile share it."""
        self._urgent.set()
        with self._lock:
            while self._written < change and not self._stop.is_set():
                self._lock.wait(self._interval)

    def flush(self) -> None:
        with self._lock:
            records, self._dirty, upto = self._dirty, {}, self._noted
        if not records:
            return
        folder = journal_prefix(self._job_id, self._jobs.folder(self._job_id))
        key = f"{folder}{time.time_ns():020d}-{secrets.token_hex(2)}.json"
        try:
            self._jobs.store.put_json(self._bucket, key, {"records": list(records.values())}, indent=None)
        except Exception:
            with self._lock:  # keep them for the next flush, unless a newer snapshot came meanwhile
                for rank, snapshot in records.items():
                    self._dirty.setdefault(rank, snapshot)
            raise
        with self._lock:
            self._written = max(self._written, upto)
            self._lock.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._urgent.set()
        self._thread.join()
        self.flush()
        with self._lock:
            self._lock.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._urgent.wait(self._interval)
            self._urgent.clear()
            try:
                self.flush()
            except Exception as exc:  # an S3 hiccup: the records stay queued for the next flush
                log.warning("journal flush failed: %s", exc)
