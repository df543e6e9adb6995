"""Photometric-redshift accuracy, as the legacy study reports it (MAE, MSE, bias, NMAD, R2).

``dz = (predicted - true) / (1 + true)`` is the normalised residual astronomers use.
"""

from __future__ import annotations

import numpy as np

#: |dz| above this counts as a catastrophic outlier, the usual photo-z convention.
OUTLIER_THRESHOLD = 0.15


def redshift_metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAE, MSE, bias (mean dz), NMAD (1.4826 x median |dz - median dz|), R2 and outlier fraction."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if predicted.shape != true.shape or predicted.size == 0:
        raise ValueError(f"need two equal, non-empty arrays, got {predicted.shape} and {true.shape}")
    error = predicted - true
    dz = error / (1 + true)
    total = float(np.sum((true - true.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(error))),
        "mse": float(np.mean(error**2)),
        "bias": float(np.mean(dz)),
        "nmad": float(1.4826 * np.median(np.abs(dz - np.median(dz)))),
        "r2": float(1 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "outlier_fraction": float(np.mean(np.abs(dz) > OUTLIER_THRESHOLD)),
        "count": float(true.size),
    }
