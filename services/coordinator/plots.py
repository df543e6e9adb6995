"""The job report's figures, each rendered to PNG bytes for ``/jobs/{id}/plots/{name}.png``.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas of their own, never
through pyplot: pyplot keeps global state (the current figure, the chosen backend) that would
leak between concurrent requests and into other users of matplotlib in the same process.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from services.accuracy import redshift_metrics

#: Beyond this many points a scatter turns into an unreadable blot (and a slow PNG): hexbin instead.
HEXBIN_ABOVE = 5_000
STATE_COLOURS = {"succeeded": "tab:green", "failed": "tab:red", "cancelled": "tab:gray"}
DPI = 100


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes, drawn by its own Agg canvas."""
    canvas = FigureCanvasAgg(figure)
    out = io.BytesIO()
    canvas.print_png(out)
    return out.getvalue()


def predicted_vs_true(predictions: np.ndarray, labels: np.ndarray) -> bytes:
    """Predicted against true redshift with the y = x line; MAE and NMAD in the title."""
    predicted = np.asarray(predictions, dtype=np.float64).reshape(-1)
    true = np.asarray(labels, dtype=np.float64).reshape(-1)
    if predicted.size == 0 or true.size == 0:
        raise ValueError("predicted_vs_true: no predictions or no labels to plot")
    if predicted.shape != true.shape:
        raise ValueError(f"predicted_vs_true: {predicted.size} predictions but {true.size} labels")
    keep = np.isfinite(predicted) & np.isfinite(true)
    if not keep.any():
        raise ValueError("predicted_vs_true: no pair of finite prediction and label")
    predicted, true = predicted[keep], true[keep]
    metrics = redshift_metrics(predicted, true)
    figure = Figure(figsize=(6, 6), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    if predicted.size > HEXBIN_ABOVE:
        cells = axes.hexbin(true, predicted, gridsize=80, bins="log", mincnt=1, cmap="viridis")
        figure.colorbar(cells, ax=axes, label="samples per cell")
    else:
        axes.scatter(true, predicted, s=6, alpha=0.6, linewidths=0)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    pad = max((high - low) * 0.02, 1e-3)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=1, label="y = x")
    axes.set(xlim=(low - pad, high + pad), ylim=(low - pad, high + pad), xlabel="true redshift",
             ylabel="predicted redshift")
    axes.set_aspect("equal")
    axes.legend(loc="upper left")
    axes.set_title(f"{predicted.size:,} samples: MAE {metrics['mae']:.4f}, NMAD {metrics['nmad']:.4f}")
    return _png(figure)


def duration_and_cost_vs_world_size(rows: Sequence[dict[str, Any]]) -> bytes:
    """Mean rank duration and job cost against world size, one line per partition size.

    ``rows`` are :func:`services.coordinator.report.seed_table_row` dicts.
    """
    if not rows:
        raise ValueError("duration_and_cost_vs_world_size: no rows to plot")
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault(str(row.get("partition") or "unlabelled"), []).append(row)
    figure = Figure(figsize=(7, 7), dpi=DPI, layout="constrained")
    duration_axes, cost_axes = figure.subplots(2, 1, sharex=True)
    for label in sorted(series, key=_partition_order):
        points = sorted(series[label], key=lambda row: row["world_size"])
        _line(duration_axes, points, "duration_s", label)
        _line(cost_axes, points, "cost_usd", label)
    duration_axes.set(ylabel="mean rank duration (s)", title="Duration and cost against world size")
    cost_axes.set(xlabel="world size (ranks)", ylabel="cost ($, estimate at list prices)")
    for axes in (duration_axes, cost_axes):
        axes.grid(True, alpha=0.3)
        axes.legend(title="partition")
    return _png(figure)


def _line(axes: Any, rows: list[dict[str, Any]], key: str, label: str) -> None:
    points = [(row["world_size"], row[key]) for row in rows if row.get(key) is not None]
    if points:
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, marker="o", label=label)


def _partition_order(label: str) -> tuple[float, str]:
    """``25MB`` before ``100MB``: by the leading number when there is one, else by name."""
    digits = "".join(ch for ch in label if ch.isdigit() or ch == ".")
    try:
        return float(digits), label
    except ValueError:
        return float("inf"), label


def rank_timeline(invocations: Sequence[Any], submitted_at: float) -> bytes:
    """One horizontal bar per rank per attempt, from submission, coloured by how it ended.

    ``invocations`` are :class:`services.coordinator.summary.Invocation` (anything with rank,
    attempt, state, started_at and ended_at); a retry is hatched so it stands out.
    """
    if not invocations:
        raise ValueError("rank_timeline: no invocations to plot")
    ranks = sorted({inv.rank for inv in invocations})
    figure = Figure(figsize=(8, min(2 + 0.25 * len(ranks), 30)), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for inv in invocations:
        start = inv.started_at - submitted_at
        axes.barh(inv.rank, max(inv.ended_at - inv.started_at, 0.0), left=start, height=0.8,
                  color=STATE_COLOURS.get(inv.state, "tab:blue"), hatch="//" if inv.attempt > 1 else None,
                  edgecolor="black", linewidth=0.3)
    axes.set(xlabel="seconds since submission", ylabel="rank", title=f"{len(ranks)} ranks, {len(invocations)} attempts")
    axes.set_xlim(left=0)  # the wait between submission and the first start is part of the story
    axes.invert_yaxis()
    if len(ranks) <= 40:
        axes.set_yticks(ranks)
    handles = [Patch(color=colour, label=state) for state, colour in STATE_COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="retry"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _png(figure)


#: The names of ``/jobs/{id}/plots/{name}.png``.
PLOTS: dict[str, Callable[..., bytes]] = {
    "predicted_vs_true": predicted_vs_true,
    "duration_cost": duration_and_cost_vs_world_size,
    "timeline": rank_timeline,
}
