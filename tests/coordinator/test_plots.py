"""The report's figures: checked on the Figure objects (ticks, axes, segments), real PNGs of a sensible size,
and clear errors when there is nothing to draw."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from services.coordinator.plots import PLOTS, duration_and_cost_vs_world_size, predicted_vs_true, to_png
from services.coordinator.state import Attempt, RankRecord
from services.coordinator.timeline import TimelineBar, bars, phases_of, rank_timeline, segments


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sane_png(data: bytes, min_side: int = 300) -> None:
    width, height = png_size(data)
    assert min_side <= width <= 3000 and min_side <= height <= 3000
    assert 2_000 < len(data) < 3_000_000


def seed_rows() -> list[dict]:
    """The seed table's four partition sizes at their own world sizes, plus a second 25MB point."""
    table = [("25MB", 517, 6.55, 0.56), ("50MB", 259, 11.8, 0.51), ("75MB", 173, 17.6, 0.51),
             ("100MB", 130, 25.0, 0.54), ("25MB", 64, 50.1, 0.53)]
    return [{"partition": label, "world_size": ranks, "requests": ranks, "duration_s": seconds, "memory_mb": 2867.0,
             "cost_usd": dollars, "legacy_cost_usd": dollars / 3.6} for label, ranks, seconds, dollars in table]


@pytest.mark.parametrize("n", [200, 20_000])  # a scatter, then a hexbin
def test_predicted_vs_true_is_a_png(n):
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 0.5, n)
    data = to_png(predicted_vs_true((true + rng.normal(0, 0.01, n)).astype(np.float32), true))
    assert_sane_png(data)
    assert png_size(data) == (1200, 600)


def test_predicted_vs_true_has_a_residual_panel_and_counts_negative_predictions():
    true = np.array([0.1, 0.2, 0.3, 0.4, 0.05, 0.5])
    predicted = np.array([0.11, 0.19, 0.33, 0.9, -0.02, -0.01])
    figure = predicted_vs_true(predicted, true)
    _scatter, residual = figure.axes
    assert "2 negative predictions" in figure.get_suptitle()
    assert residual.get_ylabel() == "dz/(1+z)" and residual.get_xlabel() == "true redshift z"
    bounds = sorted(line.get_ydata()[0] for line in residual.get_lines() if line.get_linestyle() == "--")
    assert bounds == [-0.15, 0.15]
    points = residual.collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(points)[:, 1], (predicted - true) / (1 + true))
    assert "outside the bounds" in residual.get_title() and "33.33%" in residual.get_title()  # 0.9 at 0.4, -0.01 at 0.5
    assert "1 negative prediction;" not in figure.get_suptitle()
    one = predicted_vs_true(np.array([-0.1, 0.2]), np.array([0.1, 0.2]))
    assert one.get_suptitle().endswith("1 negative prediction")


def test_predicted_vs_true_refuses_nothing_and_mismatches():
    with pytest.raises(ValueError, match="no predictions"):
        predicted_vs_true(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        predicted_vs_true(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        predicted_vs_true(np.array([np.nan]), np.array([0.1]))


def test_duration_and_cost_draws_one_line_per_partition():
    rows = seed_rows()
    rows.append({**rows[0], "world_size": 32, "duration_s": None, "cost_usd": None})  # a job with no success
    figure = duration_and_cost_vs_world_size(rows)
    assert_sane_png(to_png(figure))
    time_axes = figure.axes[0]
    solid = [line for line in time_axes.get_lines() if line.get_linestyle() == "-"]
    assert [line.get_label() for line in solid] == ["25MB", "50MB", "75MB", "100MB"]
    assert list(solid[0].get_xdata()) == [64, 517]
    ideal = {line.get_gid() for line in time_axes.get_lines() if line.get_linestyle() == "--"}
    assert ideal == {"ideal-25MB", "ideal-50MB", "ideal-75MB", "ideal-100MB"}


def test_duration_and_cost_ticks_are_whole_ranks_and_axes_start_at_zero():
    rows = [{"partition": "25MB", "world_size": n, "duration_s": 8.0 / n + 1, "wall_time_s": 10.0 / n + 1,
             "cost_usd": 0.001 * (1 + n / 10)} for n in (1, 2, 4)]
    figure = duration_and_cost_vs_world_size(rows)
    to_png(figure)  # ticks are placed when the figure is drawn
    for axes in figure.axes:
        assert axes.get_xlim()[0] == 0 and axes.get_ylim()[0] == 0
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    time_axes, cost_axes = figure.axes
    measured = next(line for line in time_axes.get_lines() if line.get_label() == "25MB")
    assert list(measured.get_ydata()) == [11.0, 6.0, 3.5]  # the wall time, not the mean rank time
    ideal = next(line for line in time_axes.get_lines() if line.get_gid() == "ideal-25MB")
    assert ideal.get_xdata()[0] == 1 and ideal.get_xdata()[-1] == 4
    assert ideal.get_ydata()[-1] == pytest.approx(11.0 / 4)
    flat = next(line for line in cost_axes.get_lines() if line.get_gid() == "ideal-25MB")
    assert set(np.round(flat.get_ydata(), 12)) == {0.0011}
    assert "wall time" in time_axes.get_ylabel()


def test_duration_and_cost_refuses_no_rows():
    with pytest.raises(ValueError, match="no rows"):
        duration_and_cost_vs_world_size([])


def timings(**seconds: float) -> dict:
    return {"download": 9.0, "parse": 0.5, "download_wait": 1.0, "load": 2.0, "infer": 4.0, "upload": 0.5,
            "total": 8.0, **seconds}


def test_rank_timeline_stacks_each_attempts_phases():
    ok = TimelineBar(rank=0, attempt=1, state="succeeded", started_at=101.0, ended_at=111.0,
                     phases=phases_of(timings(collective=1.5, total=9.0)))
    failed = TimelineBar(rank=1, attempt=1, state="failed", started_at=101.0, ended_at=103.0)
    retry = TimelineBar(rank=1, attempt=2, state="succeeded", started_at=104.0, ended_at=112.0,
                        phases=phases_of(timings()))
    figure = rank_timeline([ok, failed, retry], submitted_at=100.0)
    assert_sane_png(to_png(figure))
    patches = {patch.get_gid(): patch for patch in figure.axes[0].patches if patch.get_gid()}
    order = ["model load", "download", "infer", "upload", "collective wait", "other"]
    drawn = [(name, patches[f"rank0-attempt1-{name}"]) for name in order]
    assert [round(patch.get_width(), 6) for _, patch in drawn] == [2.0, 1.0, 4.0, 0.5, 1.5, 1.0]
    assert [round(patch.get_x(), 6) for _, patch in drawn] == [1.0, 3.0, 4.0, 8.0, 8.5, 10.0]
    assert patches["rank1-attempt1-failed"].get_width() == 2.0
    assert patches["rank1-attempt2-infer"].get_hatch() == "//"
    assert patches["rank0-attempt1-infer"].get_hatch() is None
    assert figure.axes[0].get_xlim()[0] == 0
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[:6] == order and "failed" in labels and "retry" in labels


def test_timeline_phases_fit_the_attempt_and_come_from_the_records():
    squeezed = TimelineBar(rank=0, attempt=1, state="succeeded", started_at=0.0, ended_at=4.0,
                           phases={"infer": 6.0, "upload": 2.0})
    assert segments(squeezed) == [("infer", 0.0, 3.0), ("upload", 3.0, 1.0)]
    assert phases_of({"download": 2.0, "script": 5.0}) == {"download": 2.0, "infer": 5.0}
    assert phases_of({"import": 1.2, "load": 0.0}) == {"start-up": 1.2}
    record = RankRecord(rank=2, state="running", attempts=[
        Attempt(attempt=1, started_at=5.0, ended_at=7.0, state="succeeded",
                response={"timings_s": {"infer": 1.0}}),
        Attempt(attempt=2, started_at=8.0)])
    found = bars({2: record}, now=20.0)
    assert found == [TimelineBar(2, 1, "succeeded", 5.0, 7.0, {"infer": 1.0}),
                     TimelineBar(2, 2, "running", 8.0, 20.0, {})]


def test_rank_timeline_refuses_no_attempts():
    with pytest.raises(ValueError, match="no attempts"):
        rank_timeline([], submitted_at=0.0)


def test_plot_names_match_the_api_route():
    expected = {"predicted_vs_true": predicted_vs_true, "duration_cost": duration_and_cost_vs_world_size,
                "timeline": rank_timeline}
    assert expected == PLOTS
