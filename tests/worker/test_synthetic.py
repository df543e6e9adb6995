"""The synthetic galaxies: deterministic, legacy-shaped, and with a redshift the colours predict."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from services.accuracy import redshift_metrics  # noqa: E402
from services.keys import SAMPLES_PER_PARTITION  # noqa: E402
from services.worker.synthetic import partition  # noqa: E402


def test_same_seed_same_bytes_and_legacy_shapes() -> None:
    a, b = partition(3, 64), partition(3, 64)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.magnitudes, b.magnitudes)
    assert not np.array_equal(a.images, partition(4, 64).images)
    assert a.images.shape == (64, 5, 32, 32) and a.images.dtype == np.float32
    assert a.magnitudes.dtype == np.float64 and a.redshifts is not None and a.redshifts.shape == (64,)
    assert np.isfinite(a.images).all()


def test_colours_predict_redshift() -> None:
    """A straight line through the colours already recovers z: there is signal to learn."""
    train, test = partition(1, 2000), partition(2, 500)

    def features(p: object) -> np.ndarray:
        mags = p.magnitudes  # type: ignore[attr-defined]
        return np.column_stack([np.diff(mags, axis=1), np.ones(len(mags))])

    coef, *_ = np.linalg.lstsq(features(train), train.redshifts, rcond=None)  # type: ignore[union-attr]
    metrics = redshift_metrics(features(test) @ coef, test.redshifts)  # type: ignore[arg-type]
    assert metrics["r2"] > 0.9 and metrics["nmad"] < 0.05


def test_legacy_partition_sizes_are_known() -> None:
    assert SAMPLES_PER_PARTITION == {"25MB": 1278, "50MB": 2556, "75MB": 3834, "100MB": 5113}


def test_metrics_on_known_values() -> None:
    metrics = redshift_metrics(np.array([0.1, 0.2, 0.5]), np.array([0.1, 0.2, 0.3]))
    assert metrics["mae"] == pytest.approx(0.2 / 3)
    assert metrics["mse"] == pytest.approx(0.04 / 3)
    assert metrics["bias"] == pytest.approx((0.2 / 1.3) / 3)
    assert metrics["outlier_fraction"] == pytest.approx(1 / 3)
    assert metrics["nmad"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        redshift_metrics(np.array([]), np.array([]))
