"""Simulated crowded tomograms (tomosift.simulate.cell, ``tomosift simulate-tomogram``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tomosift.errors import TomosiftError
from tomosift.simulate.cell import (
    FACE_MARGIN_VOXELS,
    TomogramPlan,
    box_at,
    mean_box_variance,
    place_particles,
    simulate_tomogram,
    tomogram_geometry,
    truth_table,
    write_tomogram,
)
from tomosift.simulate.dose import tilt_noise_sigma
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum

SETTINGS = SimulationSettings(tilt_step_deg=4.0)
CLEAN_SNR = 1e5  # noise negligible


def _assert_no_overlap(labels, positions, radii, gap):
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    needed = radii[labels][:, None] + radii[labels][None] + gap
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert np.all(distance[off_diagonal] >= needed[off_diagonal] - 1e-9)


def _assert_inside(labels, positions, radii, size_xyz, margin):
    r = radii[labels][:, None]
    assert np.all(positions - r >= margin - 1e-9)
    assert np.all(positions + r <= np.asarray(size_xyz) - 1 - margin + 1e-9)


@pytest.fixture(scope="module")
def clean(small_maps):
    """A nearly noise-free 96³ tomogram of 12 particles and its plan."""
    plan = TomogramPlan(size_voxels=96, n_particles=12, dose_e_per_a2=None, snr=CLEAN_SNR,
                        seed=4)
    return simulate_tomogram(small_maps, SETTINGS, plan, progress=False), plan


def test_place_particles_no_overlap_inside_bounds():
    radii = np.array([5.0, 9.0])
    size = (80, 80, 48)
    labels, positions = place_particles(np.random.default_rng(0), radii, size, 20, 2.0, 4.0)
    assert labels.shape == (20,) and positions.shape == (20, 3)
    assert set(labels.tolist()) == {0, 1}
    _assert_no_overlap(labels, positions, radii, 2.0)
    _assert_inside(labels, positions, radii, size, 4.0)
    again = place_particles(np.random.default_rng(0), radii, size, 20, 2.0, 4.0)
    np.testing.assert_array_equal(again[1], positions)


def test_impossible_packing_names_the_count():
    with pytest.raises(TomosiftError, match=r"only \d+ of 500 particles fit"):
        place_particles(np.random.default_rng(0), np.array([6.0]), (48, 48, 48), 500, 2.0, 4.0)
    with pytest.raises(TomosiftError, match="does not fit"):
        place_particles(np.random.default_rng(0), np.array([30.0]), (48, 48, 48), 1, 2.0, 4.0)


def test_plan_needs_exactly_one_noise_model():
    with pytest.raises(TomosiftError, match="exactly one"):
        TomogramPlan(snr=1.0)
    with pytest.raises(TomosiftError, match="exactly one"):
        TomogramPlan(dose_e_per_a2=None)
    with pytest.raises(TomosiftError, match="even"):
        TomogramPlan(size_voxels=63)


def test_tomogram_truth_is_consistent(clean):
    tomogram, plan = clean
    assert tomogram.volume.shape == (96, 96, 96) and tomogram.volume.dtype == np.float32
    assert len(tomogram.labels) == 12
    _assert_no_overlap(tomogram.labels, tomogram.positions_voxels, tomogram.radii_voxels,
                       plan.min_gap_nm / SETTINGS.voxel_size_nm)
    _assert_inside(tomogram.labels, tomogram.positions_voxels, tomogram.radii_voxels,
                   (96, 96, 96), FACE_MARGIN_VOXELS)
    for r in tomogram.rotations:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_particles_sit_where_the_truth_says(clean, small_maps):
    """A 40³ box cut at a truth position matches, within the particle's support sphere (plus
    3 voxels; neighbours and their CTF fringes fill the rest of the box), the subtomogram
    simulator's own particle of that class and rotation, and not the same particle under
    another rotation."""
    tomogram, _ = clean
    n = 40
    geometry = TiltSeriesGeometry(SETTINGS)
    spectra = [padded_spectrum(small_maps[name], SETTINGS.pad_factor)
               for name in tomogram.class_names]
    axis = np.arange(n) - n // 2
    distance = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2
                       + axis[None, None, :] ** 2)
    big = int(np.argmax(tomogram.radii_voxels))
    flip = np.diag([1.0, -1.0, -1.0])  # 180° about x
    tested = 0
    for label, position, rotation in zip(tomogram.labels, tomogram.positions_voxels,
                                         tomogram.rotations, strict=True):
        box = box_at(tomogram.volume, position, n)
        if box.shape != (n, n, n):
            continue
        mask = distance <= tomogram.radii_voxels[label] + 3
        residual = position - np.rint(position)
        right = geometry.clean_particle(spectra[label], rotation, residual)
        corr = _correlation(box[mask], right[mask])
        assert corr > 0.95
        if label == big:
            wrong = geometry.clean_particle(spectra[label], rotation @ flip, residual)
            assert _correlation(box[mask], wrong[mask]) < corr - 0.15
            tested += 1
    assert tested >= 3


def test_missing_wedge(clean):
    tomogram, _ = clean
    power = np.abs(np.fft.rfftn(tomogram.volume)) ** 2
    n = tomogram.volume.shape[0]
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, None, :]
    radius = np.sqrt(kz**2 + kx**2) + 0 * power
    angle = np.degrees(np.arctan2(np.abs(kz), kx)) + 0 * power
    ring = (radius > 10) & (radius < n / 3)  # gridding blurs the wedge's edge at low radii
    missing = power[ring & (angle > SETTINGS.tilt_max_deg + 10)].mean()
    sampled = power[ring & (angle < SETTINGS.tilt_max_deg - 10)].mean()
    assert missing < 1e-3 * sampled


def test_snr_mode_reaches_the_target(clean, small_maps):
    tomogram, plan = clean
    noisy = simulate_tomogram(small_maps, SETTINGS, replace(plan, snr=2.0), progress=False)
    np.testing.assert_array_equal(noisy.positions_voxels, tomogram.positions_voxels)
    noise = noisy.volume - tomogram.volume
    measured = (mean_box_variance(tomogram.volume, tomogram.positions_voxels, 40)
                / noise.var(dtype=np.float64))
    assert measured == pytest.approx(2.0, rel=0.02)


def test_dose_noise_is_the_detector_model(small_maps):
    plan = TomogramPlan(size_voxels=48, thickness_voxels=32, n_particles=0, dose_e_per_a2=50.0)
    tomogram = simulate_tomogram(small_maps, SETTINGS, plan, progress=False)
    assert tomogram.volume.shape == (32, 48, 48)
    tilt_sigma = tilt_noise_sigma(50.0, SETTINGS.tilt_angles_deg, SETTINGS.voxel_size_nm,
                                  SETTINGS.ice)
    assert tomogram.noise_sigma == pytest.approx(float(tilt_sigma.mean()))
    geometry = tomogram_geometry(SETTINGS, plan)
    assert geometry.settings.noise_stage == "after_ctf"
    reference = geometry.unit_noise(np.random.default_rng(99), None, tilt_sigma)
    assert tomogram.volume.std() == pytest.approx(reference.std(), rel=0.03)
    quieter = simulate_tomogram(small_maps, SETTINGS, replace(plan, dose_e_per_a2=200.0),
                                progress=False)
    assert quieter.volume.std() == pytest.approx(tomogram.volume.std() / 2, rel=1e-3)


def test_slab_and_polarity(small_maps):
    plan = TomogramPlan(size_voxels=64, thickness_voxels=36, n_particles=6, dose_e_per_a2=None,
                        snr=CLEAN_SNR, seed=2)
    dark = simulate_tomogram(small_maps, SETTINGS, plan, progress=False)
    assert dark.volume.shape == (36, 64, 64)
    assert np.all(dark.positions_voxels[:, 2] < 36)
    _assert_inside(dark.labels, dark.positions_voxels, dark.radii_voxels, (64, 64, 36),
                   FACE_MARGIN_VOXELS)
    white = simulate_tomogram(small_maps, replace(SETTINGS, polarity="white"), plan,
                              progress=False)
    np.testing.assert_allclose(white.volume, -dark.volume, atol=1e-6 * np.abs(dark.volume).max())
    centres = [box_at(dark.volume, p, 3).mean() for p in dark.positions_voxels]
    assert np.mean(centres) < -0.2 * dark.volume.std()  # particles dark (CTF on, recorded)


def test_truth_star_round_trip_and_same_bytes(small_maps, tmp_path):
    from tomosift.discovery.rotations import relion_matrix
    from tomosift.io import read_mrc
    from tomosift.tomograms.relion import read_particles_star

    plan = TomogramPlan(size_voxels=64, n_particles=6, seed=7)
    paths = []
    for run in range(2):
        tomogram = simulate_tomogram(small_maps, SETTINGS, plan, progress=False)
        mrc, star = tmp_path / f"t{run}.mrc", tmp_path / f"t{run}.star"
        write_tomogram(tomogram, mrc, star, "tomo_a")
        paths.append((mrc, star))
    assert paths[0][0].read_bytes() == paths[1][0].read_bytes()
    assert paths[0][1].read_bytes() == paths[1][1].read_bytes()

    volume, voxel = read_mrc(paths[0][0])
    np.testing.assert_array_equal(volume, tomogram.volume)
    assert voxel == pytest.approx(SETTINGS.voxel_size_nm, rel=1e-5)
    particles, _, names = read_particles_star(paths[0][1])
    assert names == list(small_maps)
    assert list(particles["rlnTomoName"]) == ["tomo_a"] * 6
    np.testing.assert_allclose(particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
                               .to_numpy(), tomogram.positions_voxels, atol=1e-5)
    np.testing.assert_array_equal(particles["rlnClassNumber"], tomogram.labels + 1)
    for (_, row), rotation in zip(particles.iterrows(), tomogram.rotations, strict=True):
        matrix = relion_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
        np.testing.assert_allclose(matrix, rotation.T, atol=1e-6)
    assert list(truth_table(tomogram, "x").columns) == list(particles.columns)


def test_cli_end_to_end(structure_path, tmp_path, capsys):
    from tomosift.cli import main
    from tomosift.tomograms.relion import read_particles_star

    out, truth = tmp_path / "cell.mrc", tmp_path / "cell.star"
    code = main(["simulate-tomogram", "--structures", str(structure_path("3hhb")),
                 str(structure_path("1bxn")), "--size", "64", "--thickness", "48",
                 "--particles", "4", "--tilt-step-deg", "6", "--out", str(out),
                 "--truth", str(truth)])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 4 particles (3hhb ") and "64 x 64 x 48 voxels" in line
    particles, _, names = read_particles_star(truth)
    assert names == ["3hhb", "1bxn"] and len(particles) == 4
    assert set(particles["rlnTomoName"]) == {"cell"}

    code = main(["simulate-tomogram", "--structures", str(structure_path("3hhb")), "--size",
                 "32", "--particles", "200", "--out", str(tmp_path / "x.mrc"), "--truth",
                 str(tmp_path / "x.star")])
    assert code == 2
    assert "of 200 particles fit" in capsys.readouterr().err
    assert not (tmp_path / "x.mrc").exists()
