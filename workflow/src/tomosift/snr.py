"""SNR estimation from pairs of subtomograms (Frank & Al-Ali 1975).

Two images with the same signal and independent noise have correlation
rho = var(s) / (var(s) + var(n)), so SNR = rho / (1 - rho): the same definition as the
simulator's contract (variance of signal over variance of noise).
"""

from __future__ import annotations

import numpy as np

from tomosift.errors import TomosiftError


def pair_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two equally shaped arrays (within ``mask`` if given)."""
    if a.shape != b.shape:
        raise TomosiftError(f"a pair must have equal shapes, got {a.shape} and {b.shape}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if mask is not None:
        x, y = x[mask], y[mask]
    x = x.ravel() - x.mean()
    y = y.ravel() - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    if denominator == 0:
        raise TomosiftError("a pair member is constant; its correlation is undefined")
    return float((x * y).sum() / denominator)


def frank_al_ali_snr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SNR estimate rho / (1 - rho) from two subtomograms of the same particle and pose."""
    rho = pair_correlation(a, b, mask)
    return rho / (1.0 - rho) if rho < 1 else float("inf")


def summarise_pair_estimates(estimates: np.ndarray) -> dict:
    """Mean, median and standard error of per-pair SNR estimates."""
    values = np.asarray(estimates, dtype=np.float64)
    error = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return {
        "pairs": int(values.size),
        "mean_snr": float(values.mean()),
        "median_snr": float(np.median(values)),
        "standard_error": float(error),
    }
