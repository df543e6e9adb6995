"""A finished job's summary and cost, as plain functions over data the caller gathered.

No S3 and no HTTP here: the caller reads the rank documents, predictions, labels, the workers'
collective summary and Lambda's REPORT lines, and passes them in, so that every figure can be
checked by hand in a test.

Cost is what AWS would bill, at list prices: billed duration x *configured* memory, for every
attempt (failed ones are billed too), plus one request per attempt, plus the job's S3 requests.
Beside it stands the legacy formula users' seed table used (requests x mean duration x memory
*used*), labelled as such: at 10,240 MB it reads several times too low, and the report gives the
ratio of the two on each job, so showing both explains the gap.

The numbers only: :mod:`.report` renders them as tables and text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np

from services.accuracy import redshift_metrics
from services.contracts import AttemptState
from services.coordinator import unitcost
from services.coordinator.pricing import Prices

#: The attempt states an invocation that was billed can end in (a superseded one ran, and is billed too).
STATES = (AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED, AttemptState.SUPERSEDED)
#: Relative tolerance within which our accuracy and the workers' collective summary agree.
AGREEMENT_RTOL = 1e-4
#: Absolute floor for that comparison, so that a metric near zero (bias) does not amplify rounding.
AGREEMENT_ATOL = 1e-9
SCHEMA = "cosmic.summary/1"
COST_BASIS = "billed duration x configured memory for every attempt (failed ones too), plus Lambda and S3 requests"
LEGACY_BASIS = ("requests x mean duration x memory used (GB) x GB-s price, the seed table's formula; Lambda bills "
                "configured memory and billed duration, so it reads low (the report gives the ratio per job)")


@dataclass(frozen=True)
class Invocation:
    """One attempt of one rank, with the figures of Lambda's REPORT line.

    ``memory_size_mb`` is the configured memory (what Lambda bills), ``max_memory_used_mb`` the
    peak the sandbox used; ``init_duration_ms`` is set only on a cold start.
    """

    rank: int
    attempt: int
    state: str
    started_at: float
    ended_at: float
    duration_ms: float
    billed_duration_ms: float
    memory_size_mb: float
    max_memory_used_mb: float
    error: str | None = None
    init_duration_ms: float | None = None
    #: The CPU the sandbox had, vCPUs, and what enforced it: the local runtime's REPORT says; AWS's does not.
    cpu_vcpus: float | None = None
    cpu_enforced_by: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"Invocation.state: must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.rank < 0 or self.attempt < 1:
            raise ValueError(f"Invocation rank {self.rank} attempt {self.attempt}: need rank >= 0 and attempt >= 1")
        if self.memory_size_mb <= 0 or self.billed_duration_ms < 0 or self.duration_ms < 0:
            raise ValueError(f"Invocation rank {self.rank} attempt {self.attempt}: durations and memory must be >= 0")


@dataclass(frozen=True)
class JobFacts:
    """What the coordinator knows of the job beyond the invocations.

    ``partition_label`` is the data prefix's last component (``25MB``), ``s3_gets``/``s3_puts``
    the caller's count of S3 requests made for the job (GET; PUT/COPY/POST/LIST).
    """

    job_id: str
    function: str
    region: str
    world_size: int
    partition_label: str | None
    partitions: int
    input_bytes: int
    submitted_at: float
    finished_at: float
    result_path: str
    s3_gets: int = 0
    s3_puts: int = 0
    architecture: str = "x86_64"
    #: What the job was warned about at submission (the communicator off for want of capacity, ...).
    warnings: tuple[str, ...] = ()
    #: How the job ended; a cancelled job's sizes count only the ranks that finished.
    state: str = "succeeded"


class InvocationCounts(TypedDict):
    attempts: int
    succeeded: int
    failed: int
    cancelled: int
    #: Attempts that lost the race for their rank's commit claim (speculative backups or originals).
    superseded: int
    retried_ranks: list[int]
    cold_starts: int


class DurationStats(TypedDict):
    """Seconds; None when no rank succeeded."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None
    mean: float | None


class Cost(TypedDict):
    lambda_compute: float
    lambda_requests: float
    s3_requests: float
    total: float
    currency: str
    prices: str
    basis: str
    note: str


class LegacyCost(TypedDict):
    total: float | None
    basis: str


class Collective(TypedDict):
    """``status``: ``not run``, ``agreed`` or ``disagreed``; ``compared``: metric -> ours, theirs, difference."""

    status: str
    agreed: bool | None
    max_relative_difference: float | None
    compared: dict[str, dict[str, Any]]
    tolerance: NotRequired[float]


class FailedRank(TypedDict):
    rank: int
    attempts: int
    state: str
    error: str | None


class FailedAttempt(TypedDict):
    rank: int
    attempt: int
    error: str | None


class Summary(TypedDict):
    """``{result_path}/summary.json`` (schema ``cosmic.summary/1``): what :func:`summarize` returns,
    and what the report, the API and the CLI read back. ``accuracy`` is
    :func:`services.accuracy.redshift_metrics`, None without labels."""

    schema: str
    job_id: str
    function: str
    region: str
    architecture: str
    result_path: str
    state: str
    partition_label: str | None
    partitions: int
    world_size: int
    samples: int | None
    input_bytes: int
    submitted_at: float
    finished_at: float
    wall_time_s: float
    samples_per_s: float | None
    invocations: InvocationCounts
    rank_duration_s: DurationStats
    configured_memory_mb: float | None
    peak_memory_mb: float | None
    gb_seconds: float
    cost: Cost
    legacy_cost: LegacyCost
    cpu: unitcost.CpuHad
    #: Billed seconds x the vCPUs each attempt had, summed: what samples_per_vcpu_s divides by.
    vcpu_seconds: float
    samples_per_vcpu_s: float | None
    usd_per_million_samples: float | None
    legacy_usd_per_million_samples: float | None
    accuracy: dict[str, float | None] | None
    collective: Collective
    failed_ranks: list[FailedRank]
    failed_attempts: list[FailedAttempt]
    warnings: list[str]


def combined_data(rank_documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The legacy ``{result_path}/combined_data.json``: the rank documents, untouched, in rank order.

    Documents without a ``rank`` key (legacy ones) keep the order they were given in.
    """
    if not all(isinstance(doc, dict) for doc in rank_documents):
        raise ValueError("combined_data: every rank document must be a JSON object")
    if not all(isinstance(doc.get("rank"), int) for doc in rank_documents):
        return list(rank_documents)
    ranks = [doc["rank"] for doc in rank_documents]
    if len(set(ranks)) != len(ranks):
        twice = sorted({rank for rank in ranks if ranks.count(rank) > 1})
        raise ValueError(f"combined_data: more than one document for ranks {twice}")
    return sorted(rank_documents, key=lambda doc: doc["rank"])


def summarize(facts: JobFacts, invocations: list[Invocation], rank_documents: list[dict[str, Any]],
              predictions: np.ndarray | None, labels: np.ndarray | None, collective: dict[str, Any] | None,
              prices: Prices) -> Summary:
    """The ``{result_path}/summary.json`` document: sizes, times, memory, cost, accuracy, faults.

    Every number is JSON-serialisable and finite (a metric that is undefined is ``None``).
    """
    if labels is not None and predictions is None:
        raise ValueError("summarize: labels were given without predictions")
    samples = _samples(rank_documents, predictions)
    accuracy = redshift_metrics(predictions, labels) if labels is not None and predictions is not None else None
    durations = [inv.duration_ms / 1000 for inv in _final_successes(invocations)]
    wall = facts.finished_at - facts.submitted_at
    summary: Summary = {
        "schema": SCHEMA,
        "job_id": facts.job_id, "function": facts.function, "region": facts.region,
        "architecture": facts.architecture, "result_path": facts.result_path, "state": facts.state,
        "partition_label": facts.partition_label, "partitions": facts.partitions, "world_size": facts.world_size,
        "samples": samples, "input_bytes": facts.input_bytes,
        "submitted_at": facts.submitted_at, "finished_at": facts.finished_at, "wall_time_s": wall,
        "samples_per_s": samples / wall if samples is not None and wall > 0 else None,
        "invocations": _invocation_counts(invocations),
        "rank_duration_s": _duration_stats(durations),
        "configured_memory_mb": max((inv.memory_size_mb for inv in invocations), default=None),
        "peak_memory_mb": max((inv.max_memory_used_mb for inv in invocations), default=None),
        "gb_seconds": gb_seconds(invocations),
        "cost": job_cost(facts, invocations, prices),
        "legacy_cost": legacy_cost(invocations, prices, facts.architecture),
        **unitcost.efficiency(invocations, samples, job_cost(facts, invocations, prices)["total"],
                              legacy_cost(invocations, prices, facts.architecture)["total"]),
        "accuracy": accuracy,
        "collective": collective_agreement(accuracy, samples, collective),
        "failed_ranks": failed_ranks(invocations),
        "failed_attempts": [{"rank": inv.rank, "attempt": inv.attempt, "error": inv.error}
                            for inv in sorted(invocations, key=lambda i: (i.rank, i.attempt)) if inv.state == "failed"],
        "warnings": list(facts.warnings),
    }
    return _finite(summary)


def _samples(rank_documents: list[dict[str, Any]], predictions: np.ndarray | None) -> int | None:
    """Samples inferred: the ranks' own counts, else (legacy documents) the predictions' length."""
    counts = [doc.get("num_samples") for doc in rank_documents]
    if counts and all(isinstance(count, int) for count in counts):
        return sum(counts)
    return int(np.asarray(predictions).size) if predictions is not None else None


def _final_successes(invocations: list[Invocation]) -> list[Invocation]:
    """Each rank's successful invocation (the last one, should a rank somehow succeed twice)."""
    best: dict[int, Invocation] = {}
    for inv in invocations:
        if inv.state == "succeeded" and (inv.rank not in best or inv.attempt > best[inv.rank].attempt):
            best[inv.rank] = inv
    return [best[rank] for rank in sorted(best)]


def _invocation_counts(invocations: list[Invocation]) -> InvocationCounts:
    def count(state: str) -> int:
        return sum(inv.state == state for inv in invocations)

    return {"attempts": len(invocations), "succeeded": count("succeeded"), "failed": count("failed"),
            "cancelled": count("cancelled"), "superseded": count("superseded"),
            "retried_ranks": sorted({inv.rank for inv in invocations if inv.attempt > 1}),
            "cold_starts": sum(inv.init_duration_ms is not None for inv in invocations)}


def _duration_stats(durations: list[float]) -> DurationStats:
    """p50/p95/max/mean of per-rank REPORT durations in seconds (numpy's linear percentiles)."""
    if not durations:
        return {"count": 0, "p50": None, "p95": None, "max": None, "mean": None}
    values = np.asarray(durations, dtype=np.float64)
    return {"count": int(values.size), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max()), "mean": float(values.mean())}


def gb_seconds(invocations: list[Invocation]) -> float:
    """What Lambda bills: billed seconds x configured GB, summed over every attempt, failed ones too."""
    return sum(inv.billed_duration_ms / 1000 * inv.memory_size_mb / 1024 for inv in invocations)


def job_cost(facts: JobFacts, invocations: list[Invocation], prices: Prices) -> Cost:
    """The job's bill at list prices, split by what is billed."""
    compute = gb_seconds(invocations) * prices.gb_second(facts.architecture)
    requests = len(invocations) * prices.lambda_requests_per_million / 1e6
    s3 = (facts.s3_gets * prices.s3_get_per_thousand + facts.s3_puts * prices.s3_put_copy_post_list_per_thousand) / 1000
    return {"lambda_compute": compute, "lambda_requests": requests, "s3_requests": s3,
            "total": compute + requests + s3, "currency": prices.currency, "prices": prices.label,
            "basis": COST_BASIS, "note": prices.note}


def legacy_cost(invocations: list[Invocation], prices: Prices, architecture: str = "x86_64") -> LegacyCost:
    """The seed table's figure, kept for comparison: requests x mean duration x memory *used*."""
    durations = [inv.duration_ms / 1000 for inv in _final_successes(invocations)]
    if not durations:
        return {"total": None, "basis": LEGACY_BASIS}
    peak_gb = max(inv.max_memory_used_mb for inv in invocations) / 1024
    total = len(invocations) * float(np.mean(durations)) * peak_gb * prices.gb_second(architecture)
    return {"total": total, "basis": LEGACY_BASIS}


def collective_agreement(accuracy: dict[str, float] | None, samples: int | None,
                         collective: dict[str, Any] | None) -> Collective:
    """Whether the workers' collective summary matches ours, metric by metric (relative 1e-4).

    Only what both sides have is compared: a collective run without labels has no accuracy.
    """
    if collective is None:
        return {"status": "not run", "agreed": None, "max_relative_difference": None, "compared": {}}
    pairs: dict[str, tuple[Any, Any]] = {"num_samples": (samples, collective.get("num_samples"))}
    theirs = collective.get("accuracy") or {}
    for name, ours in (accuracy or {}).items():
        if name in theirs:
            pairs[name] = (ours, theirs[name])
    compared = {name: _compare(ours, their) for name, (ours, their) in pairs.items()}
    diffs = [c["relative_difference"] for c in compared.values() if c["relative_difference"] is not None]
    agreed = all(c["agreed"] for c in compared.values())
    return {"status": "agreed" if agreed else "disagreed", "agreed": agreed,
            "max_relative_difference": max(diffs, default=None), "tolerance": AGREEMENT_RTOL, "compared": compared}


def _compare(ours: Any, theirs: Any) -> dict[str, Any]:
    a, b = _number(ours), _number(theirs)
    if a is None or b is None:  # both undefined (R2 of constant labels) agree; one undefined does not
        return {"ours": a, "collective": b, "relative_difference": None, "agreed": a is None and b is None}
    scale = max(abs(a), abs(b))
    relative = abs(a - b) / scale if scale > 0 else 0.0
    return {"ours": a, "collective": b, "relative_difference": relative,
            "agreed": math.isclose(a, b, rel_tol=AGREEMENT_RTOL, abs_tol=AGREEMENT_ATOL)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value) if math.isfinite(value) else None


def failed_ranks(invocations: list[Invocation]) -> list[FailedRank]:
    """Ranks with no successful attempt, each with its attempts and its last error."""
    done = {inv.rank for inv in invocations if inv.state == "succeeded"}
    result: list[FailedRank] = []
    for rank in sorted({inv.rank for inv in invocations} - done):
        tries = sorted((inv for inv in invocations if inv.rank == rank), key=lambda inv: inv.attempt)
        result.append({"rank": rank, "attempts": len(tries), "state": tries[-1].state,
                       "error": next((inv.error for inv in reversed(tries) if inv.error), None)})
    return result


def _finite(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers and NaN/inf made None, for strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
