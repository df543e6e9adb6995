"""A job's summary rendered for people: the seed table users made by hand, and the report.

The numbers come from :mod:`.summary` (``summary.json``); this module only chooses columns and
formats. It reads the summary as a document, never recomputes a figure, so that a report
rendered from a summary read back from S3 says exactly what was written there.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from services.coordinator.summary import COST_BASIS, LEGACY_BASIS, Summary

#: "Wall time" is the job's, submission to end; "Mean rank time" is the mean of the ranks' Lambda
#: durations, what the seed table called "duration" (the footnotes say so under every table).
COLUMNS = ("Partition", "World Size", "Requests", "Wall time (s)", "Mean rank time (s)", "Memory",
           "Cost ($, estimate)", "Legacy cost ($, estimate)", "$ per M samples", "Samples per vCPU-s")
CSV_COLUMNS = ("Partition", "World Size", "Requests", "Wall time (s; submission to end)",
               "Mean rank time (s; the seed table's duration)", "Memory (MB)",
               "Cost ($; estimate at Lambda list prices)",
               "Legacy cost ($; estimate at Lambda list prices by the seed-table formula)",
               "$ per million samples (billed estimate)", "Samples per vCPU-second (billed)")
#: CSV keeps numbers numeric but drops float noise (a mean of 6.55 s is not 6.549999999999999).
CSV_DIGITS = {"wall_time_s": 4, "duration_s": 4, "memory_mb": 1, "cost_usd": 8, "legacy_cost_usd": 8,
              "usd_per_million": 6, "samples_per_vcpu_s": 2}
ROW_KEYS = ("partition", "world_size", "requests", "wall_time_s", "duration_s", "memory_mb", "cost_usd",
            "legacy_cost_usd", "usd_per_million", "samples_per_vcpu_s")


def seed_table_row(summary: Summary) -> dict[str, Any]:
    """One row of the table users made by hand, from a summary: raw numbers, formatted on render."""
    return {"partition": summary.get("partition_label"), "world_size": summary["world_size"],
            "requests": summary["invocations"]["attempts"], "wall_time_s": summary["wall_time_s"],
            "duration_s": summary["rank_duration_s"]["mean"],
            "memory_mb": summary["peak_memory_mb"], "cost_usd": summary["cost"]["total"],
            "legacy_cost_usd": summary["legacy_cost"]["total"], "prices": summary["cost"]["prices"],
            "execution": summary.get("execution"),
            # (summaries written before these figures existed have none)
            "usd_per_million": summary.get("usd_per_million_samples"),
            "samples_per_vcpu_s": summary.get("samples_per_vcpu_s")}


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
    """What the columns mean, so that a pasted table carries its own caveats: the cost ratio is
    this table's own, and the shared-CPU note appears only when its ranks did share a machine."""
    prices = "; ".join(sorted({row["prices"] for row in rows if row.get("prices")})) or "Lambda list prices"
    notes = ["Wall time: from submission to the job's end. Mean rank time: the mean Lambda duration of the "
             "ranks' successful attempts (the seed table's \"duration\").",
             f"Both costs are estimates at {prices}.", f"Cost: what AWS would bill, {COST_BASIS}.",
             f"Legacy cost: {LEGACY_BASIS}."]
    ratios = [ratio for row in rows if (ratio := cost_ratio(row.get("cost_usd"), row.get("legacy_cost_usd")))]
    if ratios:
        span = (f"{ratios[0]:.1f}x the legacy formula's" if len(ratios) == 1 else
                f"{min(ratios):.1f}x to {max(ratios):.1f}x the legacy formula's, across these jobs")
        notes.append(f"Here the billed cost is {span}.")
    shared = shared_cpu_note([row.get("execution") for row in rows])
    return [*notes, *([shared] if shared else [])]


def cost_ratio(billed: float | None, legacy: float | None) -> float | None:
    """Billed cost over the legacy formula's, None when either is missing or the legacy one is zero."""
    if billed is None or not legacy or legacy <= 0:
        return None
    return billed / legacy


def shared_cpu_note(executions: list[dict[str, Any] | None]) -> str | None:
    """A warning when ranks ran on one machine's local runtime using all its CPUs or more (the S3
    server, the runtime and the coordinator need some too): there more ranks means slower and
    dearer, which says nothing of Lambda (each sandbox has CPUs of its own)."""
    crowded = [e for e in executions if e and e.get("local") and e.get("host_cpus")
               and e.get("ranks_at_once", 0) * max(e.get("threads_per_rank") or 1, 1) >= e["host_cpus"]]
    if not crowded:
        return None
    cpus = max(e["host_cpus"] for e in crowded)
    at_once = max(e["ranks_at_once"] for e in crowded)
    return (f"Shared CPUs: these ranks ran in the local Lambda runtime on one machine, up to {at_once} at once on "
            f"{cpus} CPU{'s' if cpus != 1 else ''}, so they competed for cores with each other and with the S3 "
            "server, runtime and coordinator beside them: here more ranks can be slower and dearer. On Lambda "
            "every sandbox has CPUs of its own (in proportion to its memory); do not read scaling from this table.")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "memory_mb":
        return f"{value / 1024:.1f}GB" if value >= 1024 else f"{value:.0f}MB"
    if key in ("wall_time_s", "duration_s"):
        return f"{value:.2f}"
    if key in ("cost_usd", "legacy_cost_usd", "usd_per_million"):
        return _money(value)
    if key == "samples_per_vcpu_s":
        return f"{value:.1f}"
    return str(value)


#: How the tables format a cell, by row key, for tables built elsewhere (the sweep's seed comparison).
format_cell = _cell


def _money(value: float) -> str:
    """Dollars to four significant digits without exponents: 12.35, 0.1580, 0.0006676."""
    if value >= 1:
        return f"{value:,.2f}"
    if value <= 0:
        return f"{value:.4f}"
    decimals = min(max(4, 3 - math.floor(math.log10(value))), 12)
    return f"{value:.{decimals}f}"


def render_report(summary: Summary, fmt: str) -> str:
    """A job's report: ``json`` (the summary), ``md`` (for people) or ``csv`` (the table row)."""
    if fmt == "json":
        return json.dumps(summary, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return render_table([seed_table_row(summary)], "csv")
    if fmt != "md":
        raise ValueError(f"render_report: fmt must be json, md or csv, got {fmt!r}")
    sections = [_md_heading(summary), render_table([seed_table_row(summary)], "md"), _md_accuracy(summary),
                _md_cost(summary), _md_failures(summary)]
    if summary.get("warnings"):  # (summaries written before warnings were recorded have none)
        sections.append("\n".join(["## Warnings", "", *(f"- {warning}" for warning in summary["warnings"])]) + "\n")
    return "\n".join(sections)


def _md_heading(summary: Summary) -> str:
    label = summary["partition_label"] or "-"
    memory = f"{_cell('memory_mb', summary['peak_memory_mb'])} of {_cell('memory_mb', summary['configured_memory_mb'])}"
    ended = summary.get("state", "succeeded")
    note = (f"- **{ended}**: the sizes below count only the ranks that finished before it\n"
            if ended == "cancelled" else f"- {ended}\n")
    return (f"# Job {summary['job_id']}\n\n{note}"
            f"- function `{summary['function']}` in {summary['region']} ({summary['architecture']}), "
            f"world size {summary['world_size']}, {summary['partitions']} partitions ({label})\n"
            f"- {_or_dash(summary['samples'])} samples, {summary['input_bytes']:,} input bytes, "
            f"{summary['wall_time_s']:.2f} s from submission to done\n"
            f"- {_attempts(summary['invocations'])}; peak memory {memory} configured\n"
            + _md_cpu(summary))


def _attempts(counts: Any) -> str:
    """``12 attempts (1 retried rank, 1 superseded)``: every attempt billed, and why there are extra."""
    extra = [f"{len(counts['retried_ranks'])} retried rank{'s' if len(counts['retried_ranks']) != 1 else ''}"
             if counts.get("retried_ranks") else "",
             f"{counts['superseded']} superseded" if counts.get("superseded") else ""]
    notes = ", ".join(part for part in extra if part)
    return f"{counts['attempts']} attempts" + (f" ({notes})" if notes else "")


def _md_cpu(summary: Summary) -> str:
    """The CPU each rank had: on the local runtime what its sandbox was given, beside Lambda's share."""
    cpu = summary.get("cpu")
    if not cpu or cpu["lambda_vcpus"] is None:
        return ""
    lambda_share = f"Lambda's share of the configured memory: {cpu['lambda_vcpus']:.2f} vCPU"
    if cpu["vcpus_min"] is None:
        return f"- CPU per rank: {lambda_share}\n"
    low, high = cpu["vcpus_min"], cpu["vcpus_max"]
    had = f"{low:.2f}" if high == low else f"{low:.2f}-{high:.2f}"
    return (f"- CPU per rank on this runtime: {had} vCPU, enforced by {', '.join(cpu['enforced_by']) or '-'} "
            f"({lambda_share})\n")


def _md_accuracy(summary: Summary) -> str:
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


def _md_cost(summary: Summary) -> str:
    cost = summary["cost"]
    lines = ["## Cost (estimate)", "", f"{cost['prices']}; {cost['note']}", "", "| item | $ |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {_money(cost[name])} |"
              for name in ("lambda_compute", "lambda_requests", "s3_requests", "total")]
    legacy = summary["legacy_cost"]["total"]
    per_million, legacy_per_million = summary.get("usd_per_million_samples"), summary.get(
        "legacy_usd_per_million_samples")
    if per_million is not None:
        lines += ["", f"{_money(per_million)} $ per million samples billed ({_money(legacy_per_million or 0)} by the "
                  f"seed's formula; their rows give 0.24-0.57); {summary['samples_per_vcpu_s'] or 0:.1f} samples per "
                  f"vCPU-second over {summary['vcpu_seconds']:.1f} billed vCPU-s."]
    lines += ["", f"{summary['gb_seconds']:.1f} GB-s billed: {COST_BASIS}.",
              f"Legacy cost: {_money(legacy) if legacy is not None else '-'} ({LEGACY_BASIS})."]
    ratio = cost_ratio(cost["total"], legacy)
    if ratio is not None:
        lines.append(f"On this job the billed cost is {ratio:.1f}x the legacy formula's "
                     f"(configured {_cell('memory_mb', summary['configured_memory_mb'])} against "
                     f"{_cell('memory_mb', summary['peak_memory_mb'])} used, billed against measured duration).")
    shared = shared_cpu_note([summary.get("execution")])
    if shared:
        lines += ["", shared]
    return "\n".join(lines) + "\n"


def _md_failures(summary: Summary) -> str:
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


PLAN_COLUMNS = ("", "Partition", "World Size", "Memory (MB)", "vCPU", "Duration (s)", "Wall (s)", "Cost ($)",
                "$ per M samples", "Meets")


def render_plan(plan: dict[str, Any]) -> str:
    """A plan (:func:`services.coordinator.planner.plan`) as markdown: the seed-style table of every
    configuration, the choice marked ``*``, then the assumptions."""
    lines = ["| " + " | ".join(PLAN_COLUMNS) + " |", "|" + "---|" * len(PLAN_COLUMNS)]
    for row in plan["rows"]:
        meets = ("yes" if row["meets"] else "no") + ("" if row["fits"] else " (memory too small)")
        lines.append(f"| {'*' if row['chosen'] else ''} | {row['partition']} | {row['world_size']} | "
                     f"{row['memory_mb']} | {row['vcpus']:.2f} | {row['duration_s']:.2f} | {row['wall_s']:.2f} | "
                     f"{_money(row['cost_usd'])} | {_money(row['usd_per_million_samples'])} | {meets} |")
    chosen = plan["chosen"]
    verdict = (f"Chosen (*): {chosen['world_size']} ranks of {chosen['memory_mb']} MB, about {chosen['wall_s']:.1f} s "
               f"and ${_money(chosen['cost_usd'])} ({_money(chosen['usd_per_million_samples'])} per million samples)"
               if chosen else "No configuration meets the goal: relax it, or try other memory or world sizes")
    request = plan["request"]
    heading = (f"# Plan: {request['partitions']} partitions of {request['partition_mb']:g}MB ({plan['samples']:,} "
               f"samples); {plan['goal']}")
    notes = ["Assumptions:", "", *(f"- {note}" for note in plan["assumptions"]),
             f"- Prices: {plan['prices']}. Duration is the mean rank's invocation; wall time is the job's, init "
             "included."]
    return "\n".join([heading, "", *lines, "", verdict + ".", "", *notes]) + "\n"
