"""The seed's table, reproduced: a sweep's rows beside the legacy study's own, and what differs.

The seed's rows are theirs, copied from the study's published table (shared/LEGACY.md), and cited
as such wherever they are printed. Rows are compared per partition (seconds per partition per
rank), since the seed ran one partition per rank over the whole set (517 ranks for 25MB) while a
sweep here runs a few partitions on a few ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Where the seed's rows come from, printed under every table that shows them.
SOURCE = ("the legacy study's own table (shared/LEGACY.md): Lambda at 10,240 MB, CPU, batch 512, all 659,817 "
          "samples with one partition per rank; its cost is requests x duration x memory used x $0.0000166667")
#: Their rows as published: partition, world size (= partitions), duration (s), memory, cost ($, their formula).
LEGACY_ROWS: tuple[dict[str, Any], ...] = tuple(
    {"partition": label, "world_size": ranks, "partitions": ranks, "duration_s": seconds,
     "memory_mb": gigabytes * 1024, "legacy_cost_usd": dollars, "seconds_per_partition": seconds}
    for label, ranks, seconds, gigabytes, dollars in (("25MB", 517, 6.55, 2.8, 0.16), ("50MB", 259, 11.8, 4.0, 0.20),
                                                      ("75MB", 173, 17.6, 5.9, 0.30), ("100MB", 130, 25.0, 7.0, 0.38)))
COLUMNS = ("Partition", "Source", "World size", "Partitions", "Mean rank time (s)", "s per partition",
           "Memory", "Cost ($, billed est.)", "Legacy-formula cost ($)")


def per_partition(row: dict[str, Any]) -> dict[str, Any]:
    """A sweep row with ``seconds_per_partition``: mean rank time / partitions per rank."""
    partitions, ranks, seconds = row.get("partitions"), row.get("world_size"), row.get("duration_s")
    value = seconds * ranks / partitions if partitions and ranks and seconds is not None else None
    return {**row, "seconds_per_partition": value}


def legacy_rows(ours: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed's rows for the partition sizes the sweep ran, in their order."""
    sizes = {row.get("partition") for row in ours}
    return [dict(row) for row in LEGACY_ROWS if row["partition"] in sizes]


def render(ours: Sequence[dict[str, Any]]) -> str:
    """Both tables interleaved by size (ours, then theirs), the source, and what differs and why."""
    from services.coordinator.plots import partition_order

    mine = [per_partition(row) for row in ours]
    theirs = legacy_rows(mine)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for size in sorted({str(row["partition"]) for row in [*mine, *theirs]}, key=partition_order):
        lines += [_line(row, "ours") for row in mine if row["partition"] == size]
        lines += [_line(row, "seed (theirs)") for row in theirs if row["partition"] == size]
    return "\n".join([*lines, "", f"Seed rows: {SOURCE}.", "", differences(mine, theirs)]) + "\n"


def _line(row: dict[str, Any], source: str) -> str:
    from services.coordinator.report import format_cell as cell

    cells = [str(row["partition"]), source, str(row["world_size"]), str(row.get("partitions") or "-"),
             cell("duration_s", row.get("duration_s")), cell("duration_s", row.get("seconds_per_partition")),
             cell("memory_mb", row.get("memory_mb")), cell("cost_usd", row.get("cost_usd")),
             cell("legacy_cost_usd", row.get("legacy_cost_usd"))]
    return "| " + " | ".join(cells) + " |"


def differences(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> str:
    """A short paragraph: why the two sets of numbers differ, with this sweep's own figures."""
    from services.coordinator.report import cost_ratio

    ratios = [r for row in ours if (r := cost_ratio(row.get("cost_usd"), row.get("legacy_cost_usd")))]
    executions = [row["execution"] for row in ours if row.get("execution")]
    local = [e for e in executions if e.get("local")]
    parts = ["What differs and why. Cost: the seed's figure is its own formula (memory used, measured duration); "
             "ours is what Lambda bills (configured memory, billed duration, every attempt, plus requests)"
             + (f", here {min(ratios):.1f}x to {max(ratios):.1f}x the legacy formula's on the same jobs"
                if ratios else "") + ".",
             "Memory: ours is Lambda's Max Memory Used (the sandbox's peak); the seed's rank documents reported "
             "summed allocations (shared/LEGACY.md: about 10x the real peak), the likely source of its column.",
             "Scale: the seed ran every partition of the set, one per rank; these jobs ran "
             + ", ".join(sorted({f"{row.get('partitions')} on {row['world_size']}" for row in ours}))
             + " (partitions on ranks), so compare seconds per partition, not rows."]
    if local:
        cpus = max(e.get("host_cpus") or 0 for e in local)
        at_once = max(e.get("ranks_at_once") or 0 for e in local)
        parts.append(f"CPUs: the seed's ranks each had a 10,240 MB sandbox (about 6 vCPUs) to themselves; these "
                     f"ran in the local runtime on {cpus} CPUs, up to {at_once} ranks at once, so per-partition "
                     "times here are those of a crowded machine: they grow with world size where on Lambda they "
                     "would not.")
    elif executions:
        parts.append("CPUs: these ran on Lambda; a rank's CPU share follows its configured memory, "
                     "as the seed's did at 10,240 MB.")
    cold = [row["cold_starts"] for row in ours if isinstance(row.get("cold_starts"), int)]
    if cold:
        parts.append(f"Cold starts: {sum(cold)} of these {sum(row.get('requests') or 0 for row in ours)} "
                     "invocations started a new sandbox, its imports and model load counted in its rank time.")
    parts.append("Data: ours are seeded synthetic galaxies of the legacy sizes (same samples and bytes per "
                 "partition), not the survey's images.")
    return " ".join(parts)


def comparison_rows(ours: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Our rows with seconds per partition, and the seed's for the same sizes (for the plot)."""
    mine = [per_partition(row) for row in ours]
    return mine, legacy_rows(mine)
