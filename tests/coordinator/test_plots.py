"""The report's figures: real PNGs of a sensible size, and clear errors when there is nothing to draw."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from services.coordinator.plots import (
    PLOTS,
    duration_and_cost_vs_world_size,
    predicted_vs_true,
    rank_timeline,
)
from services.coordinator.summary import Invocation


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
    data = predicted_vs_true((true + rng.normal(0, 0.01, n)).astype(np.float32), true)
    assert_sane_png(data)
    assert png_size(data) == (600, 600)


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
    assert_sane_png(duration_and_cost_vs_world_size(rows))


def test_duration_and_cost_refuses_no_rows():
    with pytest.raises(ValueError, match="no rows"):
        duration_and_cost_vs_world_size([])


def test_rank_timeline_shows_every_attempt():
    invocations = [Invocation(rank=rank, attempt=1, state="succeeded", started_at=100.5 + rank * 0.1,
                              ended_at=107.0 + rank, duration_ms=6000.0, billed_duration_ms=6000.0,
                              memory_size_mb=10240, max_memory_used_mb=2800.0) for rank in range(8)]
    invocations[3] = Invocation(rank=3, attempt=1, state="failed", started_at=100.8, ended_at=102.0, error="boom",
                                duration_ms=1200.0, billed_duration_ms=1200.0, memory_size_mb=10240,
                                max_memory_used_mb=900.0)
    invocations.append(Invocation(rank=3, attempt=2, state="succeeded", started_at=102.5, ended_at=109.0,
                                  duration_ms=6500.0, billed_duration_ms=6500.0, memory_size_mb=10240,
                                  max_memory_used_mb=2800.0))
    invocations.append(Invocation(rank=8, attempt=1, state="cancelled", started_at=101.0, ended_at=101.5,
                                  duration_ms=500.0, billed_duration_ms=500.0, memory_size_mb=10240,
                                  max_memory_used_mb=300.0))
    assert_sane_png(rank_timeline(invocations, submitted_at=100.0))


def test_rank_timeline_refuses_no_invocations():
    with pytest.raises(ValueError, match="no invocations"):
        rank_timeline([], submitted_at=0.0)


def test_plot_names_match_the_api_route():
    expected = {"predicted_vs_true": predicted_vs_true, "duration_cost": duration_and_cost_vs_world_size,
                "timeline": rank_timeline}
    assert expected == PLOTS
