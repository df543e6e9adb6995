"""Where each rank's time went: one bar per attempt, its phases stacked inside it.

The coordinator knows each attempt's span (when the invoke call was sent and answered) and, for
an attempt that answered, the worker's own per-phase seconds (``WorkerResult.timings_s``). A bar
spans the attempt; inside it the phases are laid end to end in the order a rank meets them, and
what the worker did not account for (the invoke round trip, a sandbox starting, parsing hidden
by prefetch) is left as "other". A failed or cancelled attempt without timings is one segment in
its state's colour; a retry is hatched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

#: Phase label -> the ``timings_s`` keys that measure it, first present wins. ``download_wait`` is
#: what prefetching did not hide (the rank waited for data); script mode times ``download`` and ``script``.
PHASES: dict[str, tuple[str, ...]] = {
    "start-up": ("import",),
    "model load": ("load",),
    "download": ("download_wait", "download"),
    "infer": ("infer", "script"),
    "upload": ("upload",),
    "collective wait": ("collective",),
}
PHASE_COLOURS = {"start-up": "#8c564b", "model load": "#9467bd", "download": "#1f77b4", "infer": "#2ca02c",
                 "upload": "#ff7f0e", "collective wait": "#e377c2", "other": "#d9d9d9"}
STATE_COLOURS = {"succeeded": "tab:green", "failed": "tab:red", "cancelled": "tab:gray", "running": "tab:blue",
                 "throttled": "tab:olive"}
DPI = 100


@dataclass(frozen=True)
class TimelineBar:
    """One attempt of one rank: its span in epoch seconds and the worker's phase seconds."""

    rank: int
    attempt: int
    state: str
    started_at: float
    ended_at: float
    phases: dict[str, float] = field(default_factory=dict)


def phases_of(timings: Mapping[str, Any] | None) -> dict[str, float]:
    """The worker's ``timings_s`` as timeline phases (seconds > 0 only)."""
    found: dict[str, float] = {}
    for phase, keys in PHASES.items():
        value = next((timings[key] for key in keys if timings and isinstance(timings.get(key), int | float)), None)
        if value is not None and value > 0:
            found[phase] = float(value)
    return found


def bars(ranks: Mapping[int, Any], now: float) -> list[TimelineBar]:
    """Every attempt of :class:`services.coordinator.state.RankRecord` s as bars (a running one ends ``now``)."""
    found = []
    for record in ranks.values():
        for attempt in record.attempts:
            timings = (attempt.response or {}).get("timings_s")
            found.append(TimelineBar(rank=record.rank, attempt=attempt.attempt, state=str(attempt.state),
                                     started_at=attempt.started_at, ended_at=attempt.ended_at or now,
                                     phases=phases_of(timings)))
    return found


def segments(bar: TimelineBar) -> list[tuple[str, float, float]]:
    """``(phase, start, width)`` in seconds from the attempt's start, filling the span exactly.

    Phases longer together than the span (two clocks) are scaled down to fit; "other" is the rest.
    """
    span = max(bar.ended_at - bar.started_at, 0.0)
    if not bar.phases:
        return [(bar.state, 0.0, span)]
    total = sum(bar.phases.values())
    scale = min(1.0, span / total) if total > 0 else 0.0
    laid, at = [], 0.0
    for phase in PHASES:
        if phase in bar.phases:
            width = bar.phases[phase] * scale
            laid.append((phase, at, width))
            at += width
    if span - at > 1e-9:
        laid.append(("other", at, span - at))
    return laid


def rank_timeline(attempts: Sequence[TimelineBar], submitted_at: float) -> Figure:
    """One horizontal bar per rank per attempt, from submission, with its phases stacked inside."""
    if not attempts:
        raise ValueError("rank_timeline: no attempts to plot")
    ranks = sorted({bar.rank for bar in attempts})
    figure = Figure(figsize=(9, min(2.5 + 0.25 * len(ranks), 30)), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    used: set[str] = set()
    for bar in attempts:
        origin = bar.started_at - submitted_at
        for phase, start, width in segments(bar):
            colour = PHASE_COLOURS.get(phase) or STATE_COLOURS.get(phase, "tab:blue")
            used.add(phase)
            container = axes.barh(bar.rank, width, left=origin + start, height=0.8, color=colour,
                                  hatch="//" if bar.attempt > 1 else None, edgecolor="black", linewidth=0.3)
            container.patches[0].set_gid(f"rank{bar.rank}-attempt{bar.attempt}-{phase}")
        if bar.state != "succeeded":  # how it ended, outlined, even over phases it did finish
            axes.barh(bar.rank, max(bar.ended_at - bar.started_at, 0.0), left=origin, height=0.8, fill=False,
                      edgecolor=STATE_COLOURS.get(bar.state, "tab:blue"), linewidth=1.5)
    retried = sum(bar.attempt > 1 for bar in attempts)
    axes.set(xlabel="seconds since submission", ylabel="rank",
             title=f"{len(ranks)} ranks, {len(attempts)} attempts ({retried} retries): where the time went")
    axes.set_xlim(left=0)  # the wait between submission and the first start is part of the story
    axes.invert_yaxis()
    if len(ranks) <= 40:
        axes.set_yticks(ranks)
    handles = [Patch(color=PHASE_COLOURS[name], label=name) for name in PHASE_COLOURS if name in used]
    handles += [Patch(facecolor=colour if state in used else "white", edgecolor=colour, linewidth=1.5, label=state)
                for state, colour in STATE_COLOURS.items()
                if state in used or any(bar.state == state for bar in attempts if state != "succeeded")]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="retry"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return figure
