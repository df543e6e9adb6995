"""A seeded generator of synthetic galaxies whose redshift really depends on their colours.

No survey data can be downloaded here, so the demo, tests and benchmarks run on galaxies made to
look like the legacy partitions: 5-band 32x32 images and magnitudes, and a redshift that the
colours (magnitude differences) and the apparent size predict, with scatter, so that a fitted
model's accuracy means something. The same seed and partition index always give the same bytes.
"""

from __future__ import annotations

import numpy as np

from services.worker.data import BANDS, SIDE, Partition

#: Colour-redshift relation (u-g, g-r, r-i, i-z as linear functions of z), loosely SDSS-like.
_COLOUR_SLOPES = np.array([1.1, 1.6, 0.7, 0.35])
_COLOUR_OFFSETS = np.array([1.0, 0.35, 0.2, 0.1])
_ZERO_POINT = 22.5  # nanomaggy zero point: flux = 10 ** (-0.4 * (mag - 22.5))


def galaxies(count: int, seed: int) -> Partition:
    """``count`` synthetic galaxies; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.02, 0.6, count)
    r_mag = 16.0 + 4.0 * np.sqrt(z) + rng.normal(0, 0.4, count)
    colours = _COLOUR_OFFSETS + np.outer(z, _COLOUR_SLOPES) + rng.normal(0, 0.05, (count, 4))
    # magnitudes u, g, r, i, z from r and the four colours
    g = r_mag + colours[:, 1]
    u = g + colours[:, 0]
    i = r_mag - colours[:, 2]
    zb = i - colours[:, 3]
    magnitudes = np.stack([u, g, r_mag, i, zb], axis=1)
    size = 4.5 / (1 + 6 * z) + rng.uniform(0.3, 0.8, count)  # apparent size shrinks with distance
    ellipticity = rng.uniform(0.0, 0.5, count)
    angle = rng.uniform(0, np.pi, count)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] - (SIDE - 1) / 2
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    major = xx * cos + yy * sin
    minor = (-xx * sin + yy * cos) / (1 - ellipticity)[:, None, None]
    profile = np.exp(-np.sqrt(major**2 + minor**2) / size[:, None, None])
    profile /= profile.sum(axis=(1, 2), keepdims=True)
    flux = 10 ** (-0.4 * (magnitudes - _ZERO_POINT))
    images = flux[:, :, None, None] * profile[:, None, :, :]
    images += rng.normal(0, 0.02, images.shape) * flux.mean(axis=1)[:, None, None, None] / (SIDE * SIDE)
    return Partition(images.astype(np.float32).reshape(count, BANDS, SIDE, SIDE), magnitudes.astype(np.float64),
                     z.astype(np.float32))


def partition(index: int, count: int, seed: int = 2026) -> Partition:
    """Partition ``index`` (1-based, as ``{i}.pt``) of a synthetic dataset."""
    return galaxies(count, seed * 1_000_003 + index)
