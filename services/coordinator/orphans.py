"""After a restart: the attempts a killed coordinator left in flight, settled by their own word in S3.

Lambda runs a synchronous invocation to its end even when its caller is gone, so an attempt in
flight when the coordinator died is still working, or finished meanwhile. Invoking the rank again
at once would run it twice and bill it twice (what coordinators before this one did). Instead a
restarted coordinator waits for the attempt's own word, until the attempt's deadline: its start,
plus the function's timeout, plus the invoker's read margin, by which Lambda has ended it:

- its result document (this job, status ``succeeded``): the rank succeeded, by that attempt;
- its outcome object (:mod:`services.worker.outcome`: failed, cancelled, superseded): as if it had
  answered so, and the rank goes on as it would have (a failed one is retried);
- neither by the deadline: ``lost`` (its sandbox died with it), and the rank runs again; nor even
  the progress record it writes as it starts (:mod:`services.progress`), ``start_grace_s`` after it
  was sent: ``lost`` too, at once (the coordinator died between recording the attempt and sending it).

Why wait rather than re-invoke at once and let the orphan notice it was superseded: the orphan
has already paid for its start-up and usually most of its work, so its result is the cheapest
one to be had, and two attempts of a rank never run at once (no double bill, no race for the
results). The price is paid only when the orphan died silently with the coordinator (both killed
at once): then the rank waits out the attempt's deadline. Whichever attempt writes, the rank's
commit claim (:func:`services.keys.commit_key`) lets only one of them write results.

An orphan's REPORT line went to the dead coordinator, so its cost is billed from the worker's
own figures instead (elapsed time and configured memory; ``report_source`` says so).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from services.contracts import AttemptState, WorkerEvent
from services.coordinator.state import Attempt, RankRecord
from services.keys import outcome_key, progress_key, result_key
from services.s3store import S3Store

#: Seconds between two looks for an orphan's word.
POLL_S = 1.0
_ENDINGS = {state.value: state for state in (AttemptState.FAILED, AttemptState.CANCELLED, AttemptState.SUPERSEDED)}


@dataclass(frozen=True)
class Word:
    """What S3 says of an attempt: how it ended, why, what it cost, and where that was read."""

    state: AttemptState
    attempt: int
    error: str | None
    report: dict[str, float | None]
    source: str


def worker_report(elapsed_s: Any, memory_mb: Any) -> dict[str, float | None]:
    """A REPORT line's figures from the worker's own: what a lost answer's attempt is billed at."""
    duration_ms = float(elapsed_s) * 1000 if isinstance(elapsed_s, int | float) else None
    return {"duration_ms": duration_ms,
            "billed_duration_ms": float(math.ceil(duration_ms)) if duration_ms is not None else None,
            "memory_size_mb": float(memory_mb) if isinstance(memory_mb, int | float) else None,
            "max_memory_used_mb": None, "init_duration_ms": None}


def word_of(store: S3Store, event: WorkerEvent, attempt: int) -> Word | None:
    """The word in S3 of the rank's ``attempt`` (``running`` once its progress record says it started),
    or of whichever attempt of the rank succeeded; None when it has said nothing."""
    key = result_key(event.result_path, event.rank)
    document = store.readable_json(event.result_bucket, key)
    if (isinstance(document, dict) and document.get("job_id") == event.job_id
            and document.get("status") == AttemptState.SUCCEEDED):
        runtime = document.get("runtime") if isinstance(document.get("runtime"), dict) else {}
        number = document.get("attempt")
        return Word(AttemptState.SUCCEEDED, number if isinstance(number, int) else attempt, None,
                    worker_report(runtime.get("elapsed_s"), runtime.get("memory_size_mb")), key)
    key = outcome_key(event.result_path, event.job_id, event.rank, attempt)
    outcome = store.readable_json(event.result_bucket, key)
    if isinstance(outcome, dict) and outcome.get("job_id") == event.job_id and outcome.get("status") in _ENDINGS:
        error = outcome.get("error")
        return Word(_ENDINGS[outcome["status"]], attempt, str(error) if error else None,
                    worker_report(outcome.get("elapsed_s"), outcome.get("memory_size_mb")), key)
    key = progress_key(event.result_path, event.job_id, event.rank)
    progress = store.readable_json(event.result_bucket, key)
    if isinstance(progress, dict) and progress.get("job_id") == event.job_id and progress.get("attempt") == attempt:
        return Word(AttemptState.RUNNING, attempt, None, {}, key)  # it started, and has not ended
    return None


def await_word(store: S3Store, event: WorkerEvent, attempt: int, sent_at: float, until: float,
               start_grace_s: float, poll_s: float = POLL_S) -> Word:
    """Look for the attempt's last word until the wall-clock time ``until``: how it ended, or
    ``lost`` when it said nothing by then, or never said it started ``start_grace_s`` after ``sent_at``."""
    started = False
    while True:
        word = word_of(store, event, attempt)
        if word is not None and word.state != AttemptState.RUNNING:
            return word
        started = started or word is not None
        now = time.time()
        if not started and now >= sent_at + start_grace_s:
            return _lost(attempt, f"it never said it started within {start_grace_s:g} s: the call was not sent")
        if now >= until:
            return _lost(attempt, "it left no word by its deadline (its sandbox died, or S3 was out of reach)")
        time.sleep(min(poll_s, until - now))


def _lost(attempt: int, why: str) -> Word:
    return Word(AttemptState.LOST, attempt, f"the coordinator stopped while this attempt ran, and {why}", {}, "")


def in_flight(record: RankRecord) -> bool:
    """Whether the rank's last attempt may have been sent and never answered, as a restarted
    coordinator finds it: running, or waiting out throttling (it may have been sent again since)."""
    return bool(record.attempts) and record.attempts[-1].state in (AttemptState.RUNNING, AttemptState.THROTTLED)


def hear(attempt: Attempt, word: Word) -> None:
    """Take an attempt's word in S3 as its answer (a killed coordinator missed the real one)."""
    attempt.state, attempt.error, attempt.ended_at = word.state, word.error, time.time()
    if word.source:  # (a lost attempt said nothing: nothing to bill it by)
        attempt.report, attempt.report_source = word.report, "worker"
        attempt.response = {"recovered_from": word.source}
