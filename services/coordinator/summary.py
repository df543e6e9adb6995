"""A finished job's summary, cost and report, as plain functions over data the caller gathered.

No S3 and no HTTP here: the caller reads the rank documents, predictions, labels, the workers'
collective summary and Lambda's REPORT lines, and passes them in, so that every figure can be
checked by hand in a test.

Cost is what AWS would bill, at list prices: billed duration x *configured* memory, for every
attempt (failed ones are billed too), plus one request per attempt, plus the job's S3 requests.
Beside it stands the legacy formula users' seed table used (requests x mean duration x memory
*used*), labelled as such: it is about 3x too low at 10,240 MB, and showing both explains the gap.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.accuracy import redshift_metrics
from services.coordinator.pricing import Prices

STATES = ("succeeded", "failed", "cancelled")
#: Relative tolerance within which our accuracy and the workers' collective summary agree.
AGREEMENT_RTOL = 1e-4
#: Absolute floor for that comparison, so that a metric near zero (bias) does not amplify rounding.
AGREEMENT_ATOL = 1e-9
SCHEMA = "cosmic.summary/1"
COST_BASIS = "billed duration x configured memory for every attempt (failed ones too), plus Lambda and S3 requests"
LEGACY_BASIS = ("requests x mean duration x memory used (GB) x GB-s price, the seed table's formula; Lambda bills "
                "configured memory and billed duration, so it is about 3x too low")


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
              prices: Prices) -> dict[str, Any]:
    """The ``{result_path}/summary.json`` document: sizes, times, memory, cost, accuracy, faults.

    Every number is JSON-serialisable and finite (a metric that is undefined is ``None``).
    """
    if labels is not None and predictions is None:
        raise ValueError("summarize: labels were given without predictions")
    samples = _samples(rank_documents, predictions)
    accuracy = redshift_metrics(predictions, labels) if labels is not None and predictions is not None else None
    durations = [inv.duration_ms / 1000 for inv in _final_successes(invocations)]
    wall = facts.finished_at - facts.submitted_at
    summary = {
        "schema": SCHEMA,
        "job_id": facts.job_id, "function": facts.function, "region": facts.region,
        "architecture": facts.architecture, "result_path": facts.result_path,
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
        "accuracy": accuracy,
        "collective": collective_agreement(accuracy, samples, collective),
        "failed_ranks": failed_ranks(invocations),
        "failed_attempts": [{"rank": inv.rank, "attempt": inv.attempt, "error": inv.error}
                            for inv in sorted(invocations, key=lambda i: (i.rank, i.attempt)) if inv.state == "failed"],
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


def _invocation_counts(invocations: list[Invocation]) -> dict[str, Any]:
    counts: dict[str, Any] = {"attempts": len(invocations)}
    counts.update({state: sum(inv.state == state for inv in invocations) for state in STATES})
    counts["retried_ranks"] = sorted({inv.rank for inv in invocations if inv.attempt > 1})
    counts["cold_starts"] = sum(inv.init_duration_ms is not None for inv in invocations)
    return counts


def _duration_stats(durations: list[float]) -> dict[str, Any]:
    """p50/p95/max/mean of per-rank REPORT durations in seconds (numpy's linear percentiles)."""
    if not durations:
        return {"count": 0, "p50": None, "p95": None, "max": None, "mean": None}
    values = np.asarray(durations, dtype=np.float64)
    return {"count": int(values.size), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max()), "mean": float(values.mean())}


def gb_seconds(invocations: list[Invocation]) -> float:
    """What Lambda bills: billed seconds x configured GB, summed over every attempt, failed ones too."""
    return sum(inv.billed_duration_ms / 1000 * inv.memory_size_mb / 1024 for inv in invocations)


def job_cost(facts: JobFacts, invocations: list[Invocation], prices: Prices) -> dict[str, Any]:
    """The job's bill at list prices, split by what is billed."""
    compute = gb_seconds(invocations) * prices.gb_second(facts.architecture)
    requests = len(invocations) * prices.lambda_requests_per_million / 1e6
    s3 = (facts.s3_gets * prices.s3_get_per_thousand + facts.s3_puts * prices.s3_put_copy_post_list_per_thousand) / 1000
    return {"lambda_compute": compute, "lambda_requests": requests, "s3_requests": s3,
            "total": compute + requests + s3, "currency": prices.currency, "prices": prices.label,
            "basis": COST_BASIS, "note": prices.note}


def legacy_cost(invocations: list[Invocation], prices: Prices, architecture: str = "x86_64") -> dict[str, Any]:
    """The seed table's figure, kept for comparison: requests x mean duration x memory *used*."""
    durations = [inv.duration_ms / 1000 for inv in _final_successes(invocations)]
    if not durations:
        return {"total": None, "basis": LEGACY_BASIS}
    peak_gb = max(inv.max_memory_used_mb for inv in invocations) / 1024
    total = len(invocations) * float(np.mean(durations)) * peak_gb * prices.gb_second(architecture)
    return {"total": total, "basis": LEGACY_BASIS}


def collective_agreement(accuracy: dict[str, float] | None, samples: int | None,
                         collective: dict[str, Any] | None) -> dict[str, Any]:
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


def failed_ranks(invocations: list[Invocation]) -> list[dict[str, Any]]:
    """Ranks with no successful attempt, each with its attempts and its last error."""
    done = {inv.rank for inv in invocations if inv.state == "succeeded"}
    result = []
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


# -- the seed-style table and the report ---------------------------------------------------------
COLUMNS = ("Partition", "World Size", "Requests", "Duration (s)", "Memory", "Cost ($, estimate)",
           "Legacy cost ($, estimate)")
CSV_COLUMNS = ("Partition", "World Size", "Requests", "Duration (s)", "Memory (MB)",
               "Cost ($; estimate at Lambda list prices)",
               "Legacy cost ($; estimate at Lambda list prices by the seed-table formula; about 3x too low)")
#: CSV keeps numbers numeric but drops float noise (a mean of 6.55 s is not 6.549999999999999).
CSV_DIGITS = {"duration_s": 4, "memory_mb": 1, "cost_usd": 8, "legacy_cost_usd": 8}
ROW_KEYS = ("partition", "world_size", "requests", "duration_s", "memory_mb", "cost_usd", "legacy_cost_usd")


def seed_table_row(summary: dict[str, Any]) -> dict[str, Any]:
    """One row of the table users made by hand, from a summary: raw numbers, formatted on render."""
    return {"partition": summary.get("partition_label"), "world_size": summary["world_size"],
            "requests": summary["invocations"]["attempts"], "duration_s": summary["rank_duration_s"]["mean"],
            "memory_mb": summary["peak_memory_mb"], "cost_usd": summary["cost"]["total"],
            "legacy_cost_usd": summary["legacy_cost"]["total"], "prices": summary["cost"]["prices"]}


def render_table(rows: list[dict[str, Any]], fmt: str) -> str:
    """The seed table as ``md``, ``csv`` or ``text``; md and text end with what the costs mean."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([[_csv_cell(key, row.get(key)) for key in ROW_KEYS] for row in rows])
        return out.getvalue()
    cells = [[_cell(key, row.get(key)) for key in ROW_KEYS] for row in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
    elif fmt == "text":
        widths = [max(len(text) for text in column) for column in zip(COLUMNS, *cells, strict=False)]
        lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
                 for line in (COLUMNS, *cells)]
    else:
        raise ValueError(f"render_table: fmt must be md, csv or text, got {fmt!r}")
    return "\n".join([*lines, "", *_footnotes(rows)]) + "\n"


def _csv_cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    return round(value, CSV_DIGITS[key]) if key in CSV_DIGITS else value


def _footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """What the two cost columns mean, so that a pasted table carries its own caveat."""
    prices = "; ".join(sorted({row["prices"] for row in rows if row.get("prices")})) or "Lambda list prices"
    return [f"Both costs are estimates at {prices}.", f"Cost: what AWS would bill, {COST_BASIS}.",
            f"Legacy cost: {LEGACY_BASIS}."]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "memory_mb":
        return f"{value / 1024:.1f}GB" if value >= 1024 else f"{value:.0f}MB"
    if key == "duration_s":
        return f"{value:.2f}"
    if key in ("cost_usd", "legacy_cost_usd"):
        return _money(value)
    return str(value)


def _money(value: float) -> str:
    """Dollars to four significant digits without exponents: 12.35, 0.1580, 0.0006676."""
    if value >= 1:
        return f"{value:,.2f}"
    if value <= 0:
        return f"{value:.4f}"
    decimals = min(max(4, 3 - math.floor(math.log10(value))), 12)
    return f"{value:.{decimals}f}"


def render_report(summary: dict[str, Any], fmt: str) -> str:
    """A job's report: ``json`` (the summary), ``md`` (for people) or ``csv`` (the table row)."""
    if fmt == "json":
        return json.dumps(summary, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return render_table([seed_table_row(summary)], "csv")
    if fmt != "md":
        raise ValueError(f"render_report: fmt must be json, md or csv, got {fmt!r}")
    sections = [_md_heading(summary), render_table([seed_table_row(summary)], "md"), _md_accuracy(summary),
                _md_cost(summary), _md_failures(summary)]
    return "\n".join(sections)


def _md_heading(summary: dict[str, Any]) -> str:
    label = summary["partition_label"] or "-"
    memory = f"{_cell('memory_mb', summary['peak_memory_mb'])} of {_cell('memory_mb', summary['configured_memory_mb'])}"
    return (f"# Job {summary['job_id']}\n\n"
            f"- function `{summary['function']}` in {summary['region']} ({summary['architecture']}), "
            f"world size {summary['world_size']}, {summary['partitions']} partitions ({label})\n"
            f"- {_or_dash(summary['samples'])} samples, {summary['input_bytes']:,} input bytes, "
            f"{summary['wall_time_s']:.2f} s from submission to done\n"
            f"- {summary['invocations']['attempts']} attempts; peak memory {memory} configured\n")


def _md_accuracy(summary: dict[str, Any]) -> str:
    accuracy, collective = summary["accuracy"], summary["collective"]
    lines = ["## Accuracy", ""]
    if accuracy is None:
        lines.append("No labels: accuracy not computed.")
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_or_dash(value, '.6g')} |" for name, value in accuracy.items()]
    worst = collective["max_relative_difference"]
    lines += ["", f"Workers' collective summary: {collective['status']}"
              + (f" (max relative difference {worst:.2e})" if worst is not None else "") + "."]
    return "\n".join(lines) + "\n"


def _md_cost(summary: dict[str, Any]) -> str:
    cost = summary["cost"]
    lines = ["## Cost (estimate)", "", f"{cost['prices']}; {cost['note']}", "", "| item | $ |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {_money(cost[name])} |"
              for name in ("lambda_compute", "lambda_requests", "s3_requests", "total")]
    legacy = summary["legacy_cost"]["total"]
    lines += ["", f"{summary['gb_seconds']:.1f} GB-s billed: {COST_BASIS}.",
              f"Legacy cost: {_money(legacy) if legacy is not None else '-'} ({LEGACY_BASIS})."]
    return "\n".join(lines) + "\n"


def _md_failures(summary: dict[str, Any]) -> str:
    lines = ["## Failed ranks", ""]
    failed = summary["failed_ranks"]
    lines += [f"- rank {f['rank']} ({f['state']} after {f['attempts']} attempt{'s' if f['attempts'] > 1 else ''}): "
              f"{f['error'] or 'no error text'}" for f in failed] or ["None."]
    retried = [a for a in summary["failed_attempts"] if a["rank"] not in {f["rank"] for f in failed}]
    if retried:
        lines += ["", "Failed attempts that a retry recovered:", ""]
        lines += [f"- rank {a['rank']} attempt {a['attempt']}: {a['error'] or 'no error text'}" for a in retried]
    return "\n".join(lines) + "\n"


def _or_dash(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)
