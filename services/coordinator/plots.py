"""The job report's figures as ``matplotlib.figure.Figure`` objects; :func:`to_png` renders one.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas of their own, never
through pyplot: pyplot keeps global state (the current figure, the chosen backend) that would
leak between concurrent requests and into other users of matplotlib in the same process.
Returning figures (not PNG bytes) lets the API, the CLI and a page each render them their own
way, and lets tests check ticks, axes and segments on the objects instead of pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from services.accuracy import OUTLIER_THRESHOLD, redshift_metrics
from services.coordinator.timeline import rank_timeline

#: Beyond this many points a scatter turns into an unreadable blot (and a slow PNG): hexbin instead.
HEXBIN_ABOVE = 5_000
DPI = 100


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes, drawn by its own Agg canvas."""
    canvas = FigureCanvasAgg(figure)
    out = io.BytesIO()
    canvas.print_png(out)
    return out.getvalue()


def predicted_vs_true(predictions: np.ndarray, labels: np.ndarray) -> Figure:
    """Predicted against true redshift with the y = x line, and beside it the astronomers' view:
    the residual dz/(1+z) against z with the outlier bounds. MAE, NMAD, outliers and negative
    predictions (a redshift below zero is unphysical, and a model can still say it) in the title."""
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
    residual = (predicted - true) / (1 + true)
    negative = int(np.count_nonzero(predicted < 0))
    figure = Figure(figsize=(12, 6), dpi=DPI, layout="constrained")
    scatter_axes, residual_axes = figure.subplots(1, 2)
    _points(figure, scatter_axes, true, predicted)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    pad = max((high - low) * 0.02, 1e-3)
    scatter_axes.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=1, label="y = x")
    scatter_axes.set(xlim=(low - pad, high + pad), ylim=(low - pad, high + pad), xlabel="true redshift z",
                     ylabel="predicted redshift", title="predicted against true")
    scatter_axes.set_aspect("equal")
    scatter_axes.legend(loc="upper left")

    _points(figure, residual_axes, true, residual, colourbar=False)
    residual_axes.axhline(0, color="black", linewidth=1)
    for bound in (OUTLIER_THRESHOLD, -OUTLIER_THRESHOLD):
        residual_axes.axhline(bound, color="tab:red", linestyle="--", linewidth=1,
                              label=f"outlier bounds |dz/(1+z)| = {OUTLIER_THRESHOLD}" if bound > 0 else None)
    reach = max(float(np.abs(residual).max()) * 1.05, OUTLIER_THRESHOLD * 1.5)
    residual_axes.set(ylim=(-reach, reach), xlabel="true redshift z", ylabel="dz/(1+z)",
                      title=f"residuals: bias {metrics['bias']:+.4f}, "
                            f"{metrics['outlier_fraction']:.2%} outside the bounds")
    residual_axes.legend(loc="upper right")
    figure.suptitle(f"{predicted.size:,} samples: MAE {metrics['mae']:.4f}, NMAD {metrics['nmad']:.4f}; "
                    f"{negative:,} negative prediction{'' if negative == 1 else 's'}")
    return figure


def _points(figure: Figure, axes: Any, xs: np.ndarray, ys: np.ndarray, colourbar: bool = True) -> None:
    if xs.size > HEXBIN_ABOVE:
        cells = axes.hexbin(xs, ys, gridsize=80, bins="log", mincnt=1, cmap="viridis")
        if colourbar:
            figure.colorbar(cells, ax=axes, label="samples per cell")
    else:
        axes.scatter(xs, ys, s=6, alpha=0.6, linewidths=0)


def duration_and_cost_vs_world_size(rows: Sequence[dict[str, Any]]) -> Figure:
    """Job wall time and job cost against world size, one line per partition size, each with its
    ideal-scaling line (dashed) drawn from its smallest world size: wall time falling as 1/n, cost
    flat (the same work, spread wider). Integer ticks, both axes from zero.

    ``rows`` are :func:`services.coordinator.report.seed_table_row` dicts; a row without a wall
    time (one written before it was recorded) is drawn by its mean rank time.
    """
    if not rows:
        raise ValueError("duration_and_cost_vs_world_size: no rows to plot")
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault(str(row.get("partition") or "unlabelled"), []).append(row)
    figure = Figure(figsize=(7, 7), dpi=DPI, layout="constrained")
    time_axes, cost_axes = figure.subplots(2, 1, sharex=True)
    widest = max(int(row["world_size"]) for row in rows)
    for index, label in enumerate(sorted(series, key=partition_order)):
        colour = f"C{index % 10}"
        points = sorted(series[label], key=lambda row: row["world_size"])
        _line(time_axes, points, _wall_time, label, colour, ideal=lambda n0, y0, n: y0 * n0 / n, widest=widest)
        _line(cost_axes, points, lambda row: row.get("cost_usd"), label, colour,
              ideal=lambda n0, y0, n: y0, widest=widest)
    time_axes.set(ylabel="job wall time (s)", title="Wall time and cost against world size (dashed: ideal scaling)")
    cost_axes.set(xlabel="world size (ranks)", ylabel="job cost ($, estimate at list prices)")
    for axes in (time_axes, cost_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(left=0, right=widest * 1.05 + 0.5)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(title="partition", fontsize="small")
    return figure


def _wall_time(row: dict[str, Any]) -> float | None:
    value = row.get("wall_time_s")
    return value if value is not None else row.get("duration_s")


def _line(axes: Any, rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None], label: str,
          colour: str, ideal: Callable[[float, float, np.ndarray], Any], widest: int) -> None:
    points = [(row["world_size"], value(row)) for row in rows if value(row) is not None]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    axes.plot(xs, ys, marker="o", color=colour, label=label)
    n0, y0 = points[0]
    span = np.linspace(n0, max(widest, n0), 50)
    axes.plot(span, np.broadcast_to(ideal(n0, y0, span), span.shape), linestyle="--", color=colour, alpha=0.6,
              gid=f"ideal-{label}")


def seed_comparison(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> Figure:
    """Seconds per partition and peak memory against partition size: ours (one line per world
    size) beside the seed's own rows (black, dashed). Per partition, because the seed ran one
    partition per rank over the whole set while a sweep here runs a few on each rank.

    Rows carry ``partition`` (``25MB``), ``seconds_per_partition`` and ``memory_mb``.
    """
    if not ours and not theirs:
        raise ValueError("seed_comparison: no rows to plot")
    figure = Figure(figsize=(10, 4.5), dpi=DPI, layout="constrained")
    time_axes, memory_axes = figure.subplots(1, 2)
    by_world: dict[int, list[dict[str, Any]]] = {}
    for row in ours:
        by_world.setdefault(int(row["world_size"]), []).append(row)
    for world_size in sorted(by_world):
        _by_size(time_axes, memory_axes, by_world[world_size], f"ours, {world_size} rank{'s' * (world_size != 1)}")
    _by_size(time_axes, memory_axes, list(theirs), "the seed's (theirs)", color="black", linestyle="--")
    time_axes.set(xlabel="partition size (MB)", ylabel="seconds per partition per rank",
                  title="Time per partition")
    memory_axes.set(xlabel="partition size (MB)", ylabel="memory (MB)", title="Memory (ours: peak used)")
    for axes in (time_axes, memory_axes):
        axes.set_xlim(left=0, right=110)
        axes.set_xticks([0, 25, 50, 75, 100])
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def _by_size(time_axes: Any, memory_axes: Any, rows: list[dict[str, Any]], label: str, **style: Any) -> None:
    rows = sorted(rows, key=lambda row: partition_order(str(row["partition"])))
    for axes, key in ((time_axes, "seconds_per_partition"), (memory_axes, "memory_mb")):
        points = [(partition_order(str(row["partition"]))[0], row[key]) for row in rows if row.get(key) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=label, gid=label, **style)


def partition_order(label: str) -> tuple[float, str]:
    """``25MB`` before ``100MB``: by the leading number when there is one, else by name."""
    digits = "".join(ch for ch in label if ch.isdigit() or ch == ".")
    try:
        return float(digits), label
    except ValueError:
        return float("inf"), label


#: The names of ``/jobs/{id}/plots/{name}.png``: each returns a Figure (``to_png`` renders it).
#: (:func:`seed_comparison` is the sweep's, drawn across jobs: no single job has it.)
PLOTS: dict[str, Callable[..., Figure]] = {
    "predicted_vs_true": predicted_vs_true,
    "duration_cost": duration_and_cost_vs_world_size,
    "timeline": rank_timeline,
}
