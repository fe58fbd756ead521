"""The realistic imaging mode against the physics: dose noise, defocus spread, B-factor,
crowding, ice and solvent, polarity."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from tomosift.datasets import DatasetPlan, read_truth, simulate_shard
from tomosift.density import PLATEAU_DENSITY_DA_PER_NM3
from tomosift.simulate.ctf import Optics, first_zero_per_nm
from tomosift.simulate.dose import (
    electrons_per_pixel,
    interaction_constant_rad_per_v_nm,
    tilt_noise_sigma,
)
from tomosift.simulate.specimen import (
    Crowding,
    Ice,
    place_neighbours,
    solvent_corrected,
    support_radius_voxels,
)
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum

SETTINGS = SimulationSettings()
POSE = (Rotation.from_euler("zyz", [30, 50, 70], degrees=True).as_matrix(), np.zeros(3))


@pytest.fixture(scope="module")
def maps(small_maps):
    return [small_maps["3hhb"], small_maps["1bxn"]]  # 60 kDa and 480 kDa


def simulate(tmp_path, maps, name="d.h5", settings=SETTINGS, **plan_options):
    options = {"per_class": 8, "seed": 2, **plan_options}
    plan = DatasetPlan(("3hhb", "1bxn"), **options)
    path = tmp_path / name
    simulate_shard(maps, plan, settings, 0, plan.n_particles, path, progress=False)
    with h5py.File(path) as h5:
        return h5["volumes"][()], h5["labels"][()], read_truth(h5), dict(h5.attrs)


# -- noise as the detector records it ---------------------------------------------------------


def test_interaction_constant_and_electrons_per_pixel():
    assert interaction_constant_rad_per_v_nm(300) == pytest.approx(0.006526, rel=1e-3)
    angles = np.arange(-60, 61, 2.0)
    vacuum = electrons_per_pixel(100, angles, 0.92, Ice())
    np.testing.assert_allclose(vacuum, 100 / 61 * 9.2**2)  # 138.8 e per 9.2 Å pixel and tilt
    iced = electrons_per_pixel(100, angles, 0.92, Ice(thickness_nm=150))
    # the beam crosses 150 nm at 0°, 300 nm at 60°: zero-loss fraction exp(-path / 350 nm)
    assert iced[30] / vacuum[30] == pytest.approx(np.exp(-150 / 350))
    assert iced[0] / vacuum[0] == pytest.approx(np.exp(-300 / 350))
    np.testing.assert_allclose(tilt_noise_sigma(100, angles, 0.92, Ice()), 1 / np.sqrt(vacuum))


def test_dose_noise_gives_large_complexes_a_higher_snr(tmp_path, maps):
    _, labels, truth, attrs = simulate(tmp_path, maps, dose_e_per_a2=100.0)
    small, large = truth["snr"][labels == 0].mean(), truth["snr"][labels == 1].mean()
    assert large > 3 * small  # 480 kDa against 60 kDa, the same electrons per pixel
    per_class = attrs["measured_snr_per_class"]
    assert per_class[0] == pytest.approx(small) and per_class[1] == pytest.approx(large)
    assert np.isnan(per_class[2])  # the empty class has no signal
    # the noise is the dataset's, not the particle's: the same level for every class
    np.testing.assert_allclose(truth["noise_variance"], truth["noise_variance"].mean(), rtol=0.1)
    assert attrs["noise_model"] == "dose" and attrs["noise_stage"] == "after_ctf"


def test_snr_grows_in_proportion_to_the_dose(tmp_path, maps):
    _, labels, low, _ = simulate(tmp_path, maps, "low.h5", dose_e_per_a2=40.0)
    _, _, high, _ = simulate(tmp_path, maps, "high.h5", dose_e_per_a2=160.0)
    particles = labels < 2
    # shot noise: variance 1 / electrons, so 4x the dose is 4x the SNR (same particles)
    np.testing.assert_allclose(high["signal_variance"], low["signal_variance"], rtol=1e-5)
    ratio = high["snr"][particles].mean() / low["snr"][particles].mean()
    assert ratio == pytest.approx(4.0, rel=0.08)


# -- defocus per particle and the B-factor ----------------------------------------------------


def test_each_particle_draws_its_defocus_from_the_range(tmp_path, maps):
    optics = Optics(defocus_range_um=(3.0, 6.0))
    settings = replace(SETTINGS, optics=optics)
    _, _, truth, attrs = simulate(tmp_path, maps, settings=settings, per_class=20, snr=0.1)
    defocus = truth["defocus_um"]
    assert defocus.min() >= 3.0 and defocus.max() <= 6.0
    assert stats.kstest((defocus - 3.0) / 3.0, "uniform").pvalue > 0.01
    assert list(attrs["defocus_range_um"]) == [3.0, 6.0]


@pytest.mark.parametrize("defocus_um", [3.0, 6.0])
def test_a_particle_has_the_ctf_of_its_own_defocus(defocus_um):
    geometry = TiltSeriesGeometry(replace(SETTINGS, optics=Optics(defocus_range_um=(3, 6))))
    grid = geometry.signal_grid
    transfer = geometry.signal_transfer(defocus_um)
    frequency = grid.detector_radius / (grid.box * SETTINGS.voxel_size_nm)
    order = np.argsort(frequency)
    signs = np.sign(transfer[order])
    first_flip = frequency[order][np.argmax(signs > 0)]  # CTF(0) < 0: the first zero crossing
    expected = first_zero_per_nm(Optics(defocus_um=defocus_um))
    assert first_flip == pytest.approx(expected, abs=1.5 / (grid.box * SETTINGS.voxel_size_nm))


def test_b_factor_damps_power_as_exp_minus_b_k2_over_2(small_maps):
    spectrum = padded_spectrum(small_maps["1bxn"])
    sharp = TiltSeriesGeometry(SETTINGS).clean_particle(spectrum, *POSE)
    blurred = TiltSeriesGeometry(replace(SETTINGS, optics=Optics(b_factor_a2=300.0))
                                 ).clean_particle(spectrum, *POSE)
    n = SETTINGS.box_voxels
    ratio = np.abs(np.fft.rfftn(blurred)) ** 2 / np.maximum(np.abs(np.fft.rfftn(sharp)) ** 2,
                                                            1e-30)
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), np.fft.rfftfreq(n),
                             indexing="ij")
    k_per_angstrom = np.sqrt(kx**2 + ky**2 + kz**2) / (SETTINGS.voxel_size_nm * 10)
    strong = np.abs(np.fft.rfftn(sharp)) ** 2 > 1e-3 * np.abs(np.fft.rfftn(sharp)).max() ** 2
    for shell in (0.02, 0.035, 0.05):  # 1/Å; Nyquist is 0.054
        chosen = strong & (np.abs(k_per_angstrom - shell) < 0.002)
        expected = np.exp(-300.0 * k_per_angstrom[chosen] ** 2 / 2)
        assert np.median(ratio[chosen] / expected) == pytest.approx(1.0, abs=0.05)


# -- crowding -------------------------------------------------------------------------------


def test_neighbours_sit_at_physical_distances_partly_in_the_box():
    radii = np.array([4.0, 8.0, 12.0, 16.0])
    crowding = Crowding(max_neighbours=4, min_gap_nm=0.5, max_gap_nm=3.0)
    voxel, n = 0.92, 40
    counts = []
    for index in range(300):
        rng = np.random.default_rng([7, index])
        label = index % 5  # 4 = empty
        shift = rng.uniform(-4, 4, 3)
        neighbours = place_neighbours(rng, label, shift, radii, n, voxel, crowding)
        counts.append(len(neighbours))
        centre_radius = np.median(radii) if label == 4 else radii[label]
        for i, neighbour in enumerate(neighbours):
            assert neighbour.label != label and 0 <= neighbour.label < 4
            gap = (np.linalg.norm(neighbour.position_voxels - shift) - centre_radius
                   - radii[neighbour.label]) * voxel
            assert 0.5 - 1e-9 <= gap <= 3.0 + 1e-9  # no overlap, but close
            outside = np.clip(np.abs(neighbour.position_voxels) - n / 2, 0, None)
            assert np.linalg.norm(outside) < radii[neighbour.label]  # reaches into the box
            for other in neighbours[:i]:
                distance = np.linalg.norm(neighbour.position_voxels - other.position_voxels)
                assert distance >= radii[neighbour.label] + radii[other.label] + 0.5 / voxel
    assert min(counts) == 0 and max(counts) == 4 and 1.0 < np.mean(counts) < 3.0


def test_a_crowded_empty_box_holds_parts_of_its_neighbours(tmp_path, maps):
    _, labels, alone, _ = simulate(tmp_path, maps, "alone.h5", snr=0.5)
    _, _, crowded, attrs = simulate(tmp_path, maps, "crowded.h5", snr=0.5,
                                    crowding=Crowding(max_neighbours=3))
    empty = labels == 2
    has_neighbours = (crowded["neighbour_labels"] >= 0).any(axis=1)
    assert has_neighbours[empty].any()
    assert np.all(alone["signal_variance"][empty] == 0)
    assert np.all(crowded["signal_variance"][empty & has_neighbours] > 0)
    # neighbours are placed in a larger signal box, so nothing of them wraps around
    assert attrs["signal_box_voxels"] >= 40 + 2 * attrs["class_radius_voxels"].max()


def test_support_radius_of_a_known_ball():
    n = 40
    axis = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = (np.sqrt(xx**2 + yy**2 + zz**2) <= 7.0).astype(np.float32)
    assert support_radius_voxels(ball) == pytest.approx(7.0, abs=0.01)


# -- ice and solvent --------------------------------------------------------------------------


def test_the_solvent_takes_its_share_of_the_contrast():
    plateau = PLATEAU_DENSITY_DA_PER_NM3
    density = np.array([0.0, 0.5, 1.0, 2.0]) * plateau
    corrected = solvent_corrected(density, 0.64)
    # a voxel full of protein keeps 1 - 0.64 of its contrast; half full, half the loss
    np.testing.assert_allclose(corrected / plateau, [0.0, 0.5 - 0.32, 0.36, 2.0 - 0.64],
                               atol=1e-6)
    assert solvent_corrected(density, 0.0) is density


def test_ice_and_solvent_lower_the_snr(tmp_path, maps):
    _, labels, vacuum, _ = simulate(tmp_path, maps, "vacuum.h5", dose_e_per_a2=100.0)
    iced_settings = replace(SETTINGS, ice=Ice(thickness_nm=150, solvent_contrast=0.64))
    _, _, iced, attrs = simulate(tmp_path, maps, "iced.h5", settings=iced_settings,
                                 dose_e_per_a2=100.0)
    particles = labels < 2
    # contrast about (1 - 0.64)² of the power, fewer electrons: well below a third
    assert iced["snr"][particles].mean() < 0.33 * vacuum["snr"][particles].mean()
    assert attrs["ice_thickness_nm"] == 150 and attrs["solvent_contrast"] == 0.64


# -- polarity -------------------------------------------------------------------------------


def test_white_polarity_inverts_the_recorded_contrast(tmp_path, maps):
    recorded, labels, _, attrs = simulate(tmp_path, maps, "recorded.h5", snr=1000.0)
    white, _, _, white_attrs = simulate(tmp_path, maps, "white.h5", snr=1000.0,
                                        settings=replace(SETTINGS, polarity="white"))
    np.testing.assert_array_equal(white, -recorded)
    centre = (labels == 1), slice(16, 24), slice(16, 24), slice(16, 24)
    assert recorded[centre].mean() < 0 < white[centre].mean()  # RELION wants them white
    assert attrs["polarity"] == "dark" and white_attrs["polarity"] == "white"
