"""A rank's live progress, as the worker writes it and the coordinator reads it, and the job's sum.

Part of the contract between worker and coordinator (:mod:`services.contracts` has the phases,
:class:`~services.contracts.RankPhase`; :func:`services.keys.progress_key` the object's place).
Each rank rewrites one small JSON object under its job's result path as it works: on each phase
change, and while inferring at most every few seconds, so the coordinator, the dashboard and
``cosmic status`` see samples moving, not only ranks finishing. Standard library only: both
services import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.contracts import FieldError, RankPhase

PROGRESS_VERSION = 1
#: The phases a worker reports (``queued`` and ``starting`` are the coordinator's to say).
WORKER_PHASES = (RankPhase.DOWNLOADING, RankPhase.LOADING_MODEL, RankPhase.INFERRING, RankPhase.UPLOADING,
                 RankPhase.COLLECTIVE, RankPhase.DONE)


class ProgressError(FieldError):
    """A progress record that cannot be read; ``field`` names what is wrong."""

    what = "bad progress record"


@dataclass(frozen=True)
class RankProgress:
    """Where one attempt of one rank is.

    Attributes:
        job_id, rank, attempt: which attempt wrote it (a retry's record replaces its predecessor's).
        phase: a :data:`WORKER_PHASES` value.
        samples_done: samples inferred so far by this attempt.
        samples_expected: the rank's samples, estimated from the partitions read so far (their mean
            size times the partitions it has); exact once its last partition is read; None before the first.
        partitions_done, partitions_total: partitions finished, and the rank's share.
        started_at: when the attempt started (epoch seconds, the worker's clock).
        updated_at: when this record was written.
        phases: when each phase was entered (epoch seconds): the rank's live phase timeline.
    """

    job_id: str
    rank: int
    attempt: int
    phase: str
    samples_done: int = 0
    samples_expected: int | None = None
    partitions_done: int = 0
    partitions_total: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    version: int = PROGRESS_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_progress(raw: Any) -> RankProgress:
    """A validated record; raises :class:`ProgressError` naming the first bad field."""
    if not isinstance(raw, dict):
        raise ProgressError("record", f"must be a JSON object, got {type(raw).__name__}")
    if raw.get("version") != PROGRESS_VERSION:
        raise ProgressError("version", f"this reader knows version {PROGRESS_VERSION}, got {raw.get('version')!r}")
    names = {f.name for f in dataclasses.fields(RankProgress)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ProgressError(unknown[0], "unknown field")
    for name in ("job_id", "rank", "attempt", "phase"):
        if name not in raw:
            raise ProgressError(name, "required")
    if raw["phase"] not in WORKER_PHASES:
        raise ProgressError("phase", f"must be one of {', '.join(WORKER_PHASES)}, got {raw['phase']!r}")
    for name in ("rank", "attempt", "samples_done", "partitions_done", "partitions_total"):
        value = raw.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProgressError(name, f"must be a non-negative integer, got {value!r}")
    expected = raw.get("samples_expected")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
        raise ProgressError("samples_expected", f"must be a non-negative integer or null, got {expected!r}")
    for name in ("started_at", "updated_at"):
        if not isinstance(raw.get(name, 0.0), int | float) or isinstance(raw.get(name), bool):
            raise ProgressError(name, "must be a number (epoch seconds)")
    phases = raw.get("phases", {})
    if not isinstance(phases, dict) or not all(p in WORKER_PHASES and isinstance(t, int | float)
                                               for p, t in phases.items()):
        raise ProgressError("phases", "must map worker phases to epoch seconds")
    return RankProgress(**raw)


def job_progress(records: Iterable[RankProgress], partitions_per_rank: Mapping[int, int],
                 now: float) -> dict[str, Any]:
    """The job's samples done and expected, its rate (samples per second since its first rank
    started) and the ETA at that rate. A rank without a record yet is expected to hold its
    partitions at the mean size of the partitions read so far; until one is read, nothing is
    expected (``samples_expected`` and ``eta_s`` are None)."""
    by_rank = {record.rank: record for record in records}
    done = sum(record.samples_done for record in by_rank.values())
    sized = [r for r in by_rank.values() if r.samples_expected is not None and r.partitions_total]
    per_partition = (sum(r.samples_expected or 0 for r in sized) / sum(r.partitions_total for r in sized)
                     if sized else None)
    expected: float | None = 0.0
    for rank, partitions in partitions_per_rank.items():
        record = by_rank.get(rank)
        if record is not None and record.samples_expected is not None:
            expected += record.samples_expected
        elif per_partition is not None:
            expected += per_partition * partitions
        else:
            expected = None  # unknown, whatever the other ranks say: a 10,000-rank job is polled often
            break
    started = min((r.started_at for r in by_rank.values() if r.started_at), default=None)
    elapsed = now - started if started is not None else 0.0
    rate = done / elapsed if done and elapsed > 0 else None
    remaining = max(expected - done, 0.0) if expected is not None else None
    return {"samples_done": done, "samples_expected": round(expected) if expected is not None else None,
            "samples_per_s": round(rate, 1) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate and remaining is not None else None}
