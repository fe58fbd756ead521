"""Fourier shell correlation: curves with known answers, resolution read-out and outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tomosift.discovery.fsc import (
    compute_fsc,
    fsc_curve,
    fsc_summary_line,
    plot_fsc,
    resolution_at,
    soft_sphere_mask,
    write_fsc_table,
)
from tomosift.errors import TomosiftError

N = 40
VOXEL_NM = 0.92


def _shell_of_every_voxel(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n) * n
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.floor(radius + 0.5)


def _band(volume: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.fft.ifftn(np.fft.fftn(volume) * keep).real


def test_map_with_itself_correlates_fully_at_every_shell():
    volume = np.random.default_rng(1).normal(size=(N, N, N))
    shells, fsc = fsc_curve(volume, volume)
    np.testing.assert_array_equal(shells, np.arange(N // 2 + 1))
    np.testing.assert_allclose(fsc, 1.0, atol=1e-12)
    masked = fsc_curve(volume, 3.0 * volume, mask=soft_sphere_mask(N))[1]
    np.testing.assert_allclose(masked, 1.0, atol=1e-12)


def test_independent_noise_correlates_near_zero():
    rng = np.random.default_rng(2)
    _, fsc = fsc_curve(rng.normal(size=(N, N, N)), rng.normal(size=(N, N, N)))
    assert np.mean(np.abs(fsc[3:])) < 0.1
    assert np.max(np.abs(fsc[3:])) < 0.2


def test_shared_signal_below_a_known_shell_sets_the_resolution():
    # Two maps share their signal in shells 0..s0 and carry independent noise of the same
    # power above, so the FSC steps from 1 (shell s0) to about 0 (shell s0 + 1) and the
    # interpolated 0.5 crossing lies at s0 + 0.5.
    s0 = 8
    rng = np.random.default_rng(3)
    low = _shell_of_every_voxel(N) <= s0
    signal = _band(rng.normal(size=(N, N, N)), low)
    a = signal + _band(rng.normal(size=(N, N, N)), ~low)
    b = signal + _band(rng.normal(size=(N, N, N)), ~low)
    fsc = fsc_curve(a, b)[1]
    np.testing.assert_allclose(fsc[: s0 + 1], 1.0, atol=1e-9)
    assert np.all(np.abs(fsc[s0 + 1 :]) < 0.15)
    result = compute_fsc(a, b, VOXEL_NM)
    assert result.resolution_05_nm == pytest.approx(N * VOXEL_NM / (s0 + 0.5), rel=0.01)
    assert N * VOXEL_NM / (s0 + 1) < result.resolution_0143_nm < N * VOXEL_NM / s0
    assert result.mask == "none"
    assert result.summary_line() == fsc_summary_line(result.resolution_05_nm,
                                                     result.resolution_0143_nm)


def test_resolution_at_edge_cases():
    shells = np.arange(21)
    assert resolution_at(shells, np.ones(21), 0.143, N, VOXEL_NM) == pytest.approx(2 * VOXEL_NM)
    below_at_once = np.r_[1.0, np.zeros(20)]
    assert math.isinf(resolution_at(shells, below_at_once, 0.5, N, VOXEL_NM))
    # Linear interpolation: 0.8 at shell 4, 0.2 at shell 5 -> 0.5 at shell 4.5.
    curve = np.r_[np.ones(5) * 0.8, np.ones(16) * 0.2]
    assert resolution_at(shells, curve, 0.5, N, VOXEL_NM) == pytest.approx(N * VOXEL_NM / 4.5)


def test_summary_line_format():
    assert fsc_summary_line(4.3294, 3.9) == "FSC 0.5: 4.33 nm; FSC 0.143: 3.90 nm"


def test_soft_sphere_mask_profile():
    mask = soft_sphere_mask(N, radius_voxels=10.0, edge_voxels=4.0)
    c = N // 2
    assert mask.shape == (N, N, N)
    assert mask[c, c, c] == 1.0 and mask[c, c, c + 10] == 1.0
    assert mask[c, c, c + 12] == pytest.approx(0.5)
    assert mask[c, c, c + 14] == 0.0 and mask[0, 0, 0] == 0.0
    default = soft_sphere_mask(N)
    assert default[c, c, c + 15] == 1.0 and default[c, c, c + 19] == 0.0
    with pytest.raises(TomosiftError, match="radius"):
        soft_sphere_mask(8, edge_voxels=4.0)


def test_the_fsc_over_observed_coefficients_ignores_what_a_map_never_saw():
    """A map that observed half of Fourier space (the other half replaced by noise of the same
    power) correlates with the truth near 1 over its observed half, and near 0.5 over all."""
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(N, N, N))
    observed = np.zeros((N, N, N // 2 + 1), dtype=np.float32)
    observed[..., ::2] = 1  # every other kx plane: Hermitian-consistent, about half
    seen = np.fft.irfftn(np.fft.rfftn(truth) * observed
                         + np.fft.rfftn(rng.normal(size=(N, N, N))) * (1 - observed),
                         s=(N, N, N))
    full = fsc_curve(seen, truth)[1]
    only = fsc_curve(seen, truth, observed=observed)[1]
    assert np.all(np.abs(full[3:] - 0.5) < 0.15), full
    np.testing.assert_allclose(only[1:], 1.0, atol=1e-6)
    with pytest.raises(TomosiftError, match="Fourier mask"):
        fsc_curve(seen, truth, observed=observed[:, :, :-1])


def test_mismatched_maps_are_refused():
    with pytest.raises(TomosiftError, match="same shape"):
        fsc_curve(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)))


def test_table_and_plot(tmp_path):
    volume = np.random.default_rng(4).normal(size=(16, 16, 16))
    shells, fsc = fsc_curve(volume, volume + np.random.default_rng(5).normal(size=volume.shape))
    write_fsc_table(tmp_path / "fsc.tsv", shells, fsc, 16, VOXEL_NM)
    table = pd.read_csv(tmp_path / "fsc.tsv", sep="\t")
    assert list(table.columns) == ["shell", "frequency_per_nm", "resolution_nm", "fsc"]
    assert table["frequency_per_nm"].iloc[4] == pytest.approx(4 / (16 * VOXEL_NM), rel=1e-5)
    assert table["resolution_nm"].iloc[8] == pytest.approx(2 * VOXEL_NM, rel=1e-5)
    assert math.isinf(table["resolution_nm"].iloc[0])
    np.testing.assert_allclose(table["fsc"], fsc, atol=1e-6)
    plot_fsc(tmp_path / "fsc.png", {"half maps": (shells, fsc)}, 16, VOXEL_NM, "test")
    assert (tmp_path / "fsc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
