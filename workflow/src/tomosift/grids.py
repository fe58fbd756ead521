"""Trilinear interpolation weights, shared by splatting, gridding and sampling."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def trilinear_corners(points: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The 8 grid corners around each point and their trilinear weights.

    Args:
        points: (M, 3) positions x, y, z in grid units.

    Yields:
        8 times (corner (M, 3) int64 x, y, z indices, unwrapped; weight (M,) float64); the
        weights of a point sum to 1.
    """
    base = np.floor(points).astype(np.int64)
    frac = points - base
    for dz in (0, 1):
        wz = frac[:, 2] if dz else 1 - frac[:, 2]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1 - frac[:, 1]
            for dx in (0, 1):
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                yield base + np.array([dx, dy, dz]), wz * wy * wx
