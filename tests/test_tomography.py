"""The tilt-series simulator against the physics: geometry, wedge, SNR, poses, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from tomosift.errors import TomosiftError
from tomosift.simulate.ctf import Optics
from tomosift.simulate.poses import pose_rng, random_pose
from tomosift.simulate.realspace import rotate_volume, simulate_particle_realspace
from tomosift.simulate.tomography import (
    SimulationSettings,
    TiltSeriesGeometry,
    padded_spectrum,
)
from tomosift.snr import frank_al_ali_snr

NO_OPTICS = Optics(ctf_enabled=False, mtf_enabled=False)
POSE = (Rotation.from_euler("zyz", [30, 50, 70], degrees=True).as_matrix(),
        np.array([1.5, -2.2, 0.7]))


def correlation(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def spectrum_1bxn(small_maps):
    return padded_spectrum(small_maps["1bxn"])


@pytest.mark.parametrize("mode", ["fourier", "wbp"])
def test_full_tilt_range_reconstructs_the_rotated_map(small_maps, spectrum_1bxn, mode):
    settings = SimulationSettings(tilt_max_deg=90, tilt_step_deg=1, optics=NO_OPTICS,
                                  reconstruction=mode)
    reconstruction = TiltSeriesGeometry(settings).clean_particle(spectrum_1bxn, *POSE)
    direct = rotate_volume(small_maps["1bxn"], *POSE)
    assert correlation(reconstruction, direct) >= 0.98
    # conventions matter: the inverse rotation or the opposite shift correlate clearly less
    rotation, shift = POSE
    assert correlation(reconstruction, rotate_volume(small_maps["1bxn"], rotation.T, shift)) < 0.95
    assert correlation(reconstruction, rotate_volume(small_maps["1bxn"], rotation, -shift)) < 0.9


def test_missing_wedge_is_empty(spectrum_1bxn):
    settings = SimulationSettings(tilt_max_deg=60, optics=NO_OPTICS)
    reconstruction = TiltSeriesGeometry(settings).clean_particle(spectrum_1bxn, *POSE)
    power = np.abs(np.fft.fftn(reconstruction)) ** 2
    n = reconstruction.shape[0]
    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(n, 1 / n)] * 3, indexing="ij")
    radius = np.sqrt(kx**2 + ky**2 + kz**2)
    angle = np.arctan2(np.abs(kz), np.abs(kx))  # from the x axis in the x-z plane
    limit = np.deg2rad(60)
    # distance from the nearest sampled plane; the gridding kernel reaches one voxel
    distance = np.hypot(kx, kz) * np.sin(np.clip(angle - limit, 0, None))
    inside = (angle > limit) & (distance > 1.0) & (radius >= 3)
    outside = (angle <= limit) & (radius >= 3)
    assert inside.sum() > 1000
    assert power[inside].mean() < 0.01 * power[outside].mean()


def test_fourier_simulator_agrees_with_real_space_pipeline(small_maps, spectrum_1bxn):
    settings = SimulationSettings(reconstruction="wbp")  # the real-space code is a WBP
    fast = TiltSeriesGeometry(settings).clean_particle(spectrum_1bxn, *POSE)
    slow = simulate_particle_realspace(small_maps["1bxn"], *POSE, settings, 0.0,
                                       np.random.default_rng(0))
    assert correlation(fast, slow) > 0.95
    # the CTF makes the particle dark in both
    centre = slice(16, 24)
    assert fast[centre, centre, centre].mean() < 0 and slow[centre, centre, centre].mean() < 0


@pytest.mark.parametrize("target", [0.5, 0.1, 0.05])
def test_snr_estimate_from_pairs_hits_the_target(small_maps, target):
    geometry = TiltSeriesGeometry(SimulationSettings())
    spectrum = padded_spectrum(small_maps["3hhb"])
    rng = np.random.default_rng(int(target * 1000))
    estimates = []
    for index in range(24):
        rotation, shift = random_pose(pose_rng(5, index), 4.0)
        first, _, _ = geometry.particle(spectrum, rotation, shift, target, rng)
        second, _, _ = geometry.particle(spectrum, rotation, shift, target, rng)
        estimates.append(frank_al_ali_snr(first, second))
    assert np.mean(estimates) == pytest.approx(target, rel=0.15)


def test_snr_1000_is_nearly_clean(spectrum_1bxn):
    geometry = TiltSeriesGeometry(SimulationSettings())
    noisy, _, _ = geometry.particle(spectrum_1bxn, *POSE, 1000.0, np.random.default_rng(1))
    assert correlation(noisy, geometry.clean_particle(spectrum_1bxn, *POSE)) > 0.999


def test_empty_subtomogram_is_noise_at_the_given_level():
    geometry = TiltSeriesGeometry(SimulationSettings())
    volume, signal_variance, sigma = geometry.particle(
        None, np.eye(3), np.zeros(3), 0.1, np.random.default_rng(2), empty_noise_sigma=3.0)
    assert signal_variance == 0 and sigma == 3.0
    assert volume.var() == pytest.approx(9.0 * geometry.noise_gain, rel=0.1)


def test_rotations_are_uniform():
    rotations = np.array([random_pose(pose_rng(9, i), 4.0)[0] for i in range(3000)])
    assert np.abs(rotations.mean(axis=0)).max() < 0.05  # E[R] = 0 for uniform SO(3)
    angles = Rotation.from_matrix(rotations).magnitude()
    # the rotation angle has density (1 - cos w) / pi on [0, pi]
    cdf = lambda w: (w - np.sin(w)) / np.pi  # noqa: E731
    assert stats.kstest(angles, cdf).pvalue > 0.01
    shifts = np.array([random_pose(pose_rng(9, i), 4.0)[1] for i in range(3000)])
    assert shifts.min() >= -4 and shifts.max() <= 4 and abs(shifts.mean()) < 0.2


def test_noise_is_stationary_across_the_box():
    # gridding damps a reconstruction towards the box faces (noise variance 0.4 of the centre's
    # there); de-apodisation makes the noise of a subtomogram the same everywhere
    geometry = TiltSeriesGeometry(SimulationSettings())
    rng = np.random.default_rng(8)
    power = np.zeros((3, 40))
    for _ in range(12):
        squared = geometry.unit_noise(rng) ** 2
        power += [squared.mean(axis=(1, 2)), squared.mean(axis=(0, 2)), squared.mean(axis=(0, 1))]
    relative = power / power[:, 16:24].mean(axis=1, keepdims=True)  # z, y, x profiles
    assert np.abs(relative - 1).max() < 0.08


def test_same_seed_same_pose_and_noise(spectrum_1bxn):
    geometry = TiltSeriesGeometry(SimulationSettings())
    a = geometry.particle(spectrum_1bxn, *random_pose(pose_rng(4, 17), 4), 0.1,
                          np.random.default_rng([4, 17]))[0]
    b = geometry.particle(spectrum_1bxn, *random_pose(pose_rng(4, 17), 4), 0.1,
                          np.random.default_rng([4, 17]))[0]
    assert a.tobytes() == b.tobytes()


def test_wedge_mode_is_an_approximation_close_to_fourier(spectrum_1bxn):
    full = TiltSeriesGeometry(SimulationSettings()).clean_particle(spectrum_1bxn, *POSE)
    cheap = TiltSeriesGeometry(SimulationSettings(reconstruction="wedge")).clean_particle(
        spectrum_1bxn, *POSE)
    assert 0.8 < correlation(full, cheap) < 0.999


# -- bad input ------------------------------------------------------------------------------


def test_wrong_map_shape_and_nans(small_maps):
    with pytest.raises(TomosiftError, match="cubic"):
        padded_spectrum(np.zeros((40, 40, 30)))
    broken = small_maps["3hhb"].copy()
    broken[3, 4, 5] = np.nan
    with pytest.raises(TomosiftError, match="NaN"):
        padded_spectrum(broken)


@pytest.mark.parametrize("tilt", [0, -10, 90.5, 120])
def test_tilt_outside_0_90(tilt):
    with pytest.raises(TomosiftError, match=r"tilt_max_deg must be in \(0, 90\]"):
        SimulationSettings(tilt_max_deg=tilt)


@pytest.mark.parametrize("snr", [0.0, -0.5])
def test_snr_must_be_positive(spectrum_1bxn, snr):
    geometry = TiltSeriesGeometry(replace(SimulationSettings(), tilt_step_deg=10))
    with pytest.raises(TomosiftError, match="SNR must be > 0"):
        geometry.particle(spectrum_1bxn, *POSE, snr, np.random.default_rng(0))


# -- the box edge ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def largest_map(structure_path):
    """4V94, the shared complex that reaches farthest from its centre (about 19 nm)."""
    from tomosift.density import DensitySettings, make_density

    return make_density(structure_path("4v94"), DensitySettings())[0]


def test_a_shifted_particle_leaves_the_box_instead_of_wrapping(largest_map):
    from tomosift.datasets import DatasetPlan, signal_box_for
    from tomosift.simulate.specimen import support_radius_voxels

    settings = SimulationSettings(tilt_max_deg=90, tilt_step_deg=1, optics=NO_OPTICS)
    plan = DatasetPlan(("4v94",), per_class=2, snr=1.0)  # as a dataset of it would be made
    box = signal_box_for(settings, plan, np.array([support_radius_voxels(largest_map)]))
    geometry = TiltSeriesGeometry(replace(settings, signal_box_voxels=box))
    shift = np.array([4.0, 0.0, 0.0])  # the largest shift of the paper's datasets, along +x
    volume = geometry.clean_particle(padded_spectrum(largest_map), np.eye(3), shift)
    # the particle moved towards +x: what crossed x = +n/2 must not reappear at x = -n/2
    # (its own density ends 3 voxels before that face)
    far_side = volume[:, :, :2].sum() / volume.sum()
    assert abs(far_side) < 0.001, f"{far_side:.2%} of the density wrapped to the far face"
    direct = rotate_volume(largest_map, np.eye(3), shift)  # real space: density leaves the box
    assert correlation(volume, direct) > 0.99
