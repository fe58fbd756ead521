"""Wedge masks, rigid transforms and RELION angles, constrained-correlation alignment over
SO(3), and wedge-weighted averaging (tomosift.discovery.wedge, rotations, align, average)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomosift.discovery.align import (
    AlignSettings,
    _neighbourhood_max,
    align,
    align_prepared,
    coarse_box,
    constrained_correlation,
    prepare,
)
from tomosift.discovery.average import average
from tomosift.discovery.fsc import fsc_curve, resolution_at
from tomosift.discovery.rotations import (
    relion_angles,
    relion_matrix,
    relion_pose,
    rotation_angle_deg,
    shift_volume_fourier,
    transform_volume,
)
from tomosift.discovery.wedge import apply_mask, observed, wedge_mask
from tomosift.errors import TomosiftError
from tomosift.simulate.tomography import SimulationSettings, _WedgeGrid, rotation_about_y

BOX = 40
VOXEL_NM = 0.92


@pytest.fixture(scope="module")
def asymmetric_map(structure_path):
    """40³ map of 1u6g (Cand1-Cul1-Roc1): no (pseudo-)symmetry to make poses ambiguous."""
    from tomosift.density import DensitySettings, make_density

    return make_density(structure_path("1u6g"), DensitySettings())[0]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _particle(volume, rng, mask, snr=None):
    """A wedge-masked copy of ``volume`` in a random pose; returns (particle, R, t)."""
    rotation = Rotation.random(random_state=rng).as_matrix()
    shift = rng.uniform(-3, 3, size=3)
    particle = transform_volume(volume, rotation, shift)
    if snr is not None:
        particle = particle + rng.normal(0, np.sqrt(particle.var() / snr), particle.shape)
    return apply_mask(particle, mask), rotation, shift


# -- wedge masks --------------------------------------------------------------------------


@pytest.mark.parametrize("tilt", [60.0, 45.0, 30.0])
def test_symmetric_wedge_is_the_simulators(tilt):
    settings = SimulationSettings(box_voxels=BOX, tilt_max_deg=tilt, reconstruction="wedge")
    expected = _WedgeGrid(settings, BOX).sampled
    mask = wedge_mask(BOX, -tilt, tilt)
    assert mask.shape == (BOX, BOX, BOX // 2 + 1) and mask.dtype == np.float32
    # The simulator bounds |(kx, kz)| <= n / 2 (a cylinder); the masks bound |k| (a sphere).
    sphere = wedge_mask(BOX, -90, 90) > 0
    np.testing.assert_array_equal(mask[sphere], expected[sphere])
    assert not mask[~sphere].any() and expected[~sphere].any()


def test_full_layout_and_no_wedge():
    full = wedge_mask(BOX, -60, 60, half=False)
    assert full.shape == (BOX,) * 3
    np.testing.assert_array_equal(full[:, :, : BOX // 2 + 1], wedge_mask(BOX, -60, 60))
    mirror = (-np.arange(BOX)) % BOX
    np.testing.assert_array_equal(full, full[mirror][:, mirror][:, :, mirror])  # even
    k = np.fft.fftfreq(BOX, 1 / BOX)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    np.testing.assert_array_equal(wedge_mask(BOX, -90, 90, half=False), radius <= BOX / 2)
    # Frequencies are spread evenly in their angle about y: ±60° observes 120° of 180°.
    assert full[radius <= BOX / 2].mean() == pytest.approx(2 / 3, abs=0.02)


def test_asymmetric_wedge_sign_follows_the_simulators_tilts():
    # The simulator's projection at tilt a observes R_y(a)^T (u, v, 0) (_SliceGrid).
    u, v = np.meshgrid(np.arange(-8, 9), np.arange(-8, 9))
    detector = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], axis=1)
    for angle in (5.0, 30.0, 49.0):
        assert observed(detector @ rotation_about_y(np.deg2rad(angle)), 0.0, 50.0).all()
        plane = detector @ rotation_about_y(np.deg2rad(-angle))
        assert not observed(plane, 0.0, 50.0)[u.ravel() != 0].any()
    mask = wedge_mask(BOX, 0, 60)
    assert mask[5, 0, 5] == 1  # kz = kx = 5: theta = +45°
    assert mask[-5, 0, 5] == 0  # kz = -5, kx = 5: theta = -45°
    assert mask[7, 3, 0] == 0 and mask[0, 3, 0] == 1  # kx = 0: theta = 90° unless kz = 0
    np.testing.assert_array_equal(wedge_mask(BOX, -60, 0)[5, 0, 5], 0)


def test_rotated_mask_is_the_mask_of_the_rotated_volume(asymmetric_map):
    mask = wedge_mask(BOX, -60, 60)
    rotation = Rotation.from_euler("zyz", [40, 70, -25], degrees=True).as_matrix()
    power = np.abs(np.fft.rfftn(transform_volume(apply_mask(asymmetric_map, mask), rotation)))**2
    k = np.stack(np.meshgrid(np.fft.fftfreq(BOX, 1 / BOX), np.fft.fftfreq(BOX, 1 / BOX),
                             np.fft.rfftfreq(BOX, 1 / BOX), indexing="ij"), axis=-1)
    radius = np.sqrt(np.sum(k**2, axis=-1))
    band = (radius >= 4) & (radius <= 12)

    def leak(candidate):
        # Power well outside the candidate's wedge over power well inside it; 10° margins
        # skip the interpolation's blur across the wedge's edges.
        deep_in = wedge_mask(BOX, -50, 50, rotation=candidate) > 0
        deep_out = wedge_mask(BOX, -70, 70, rotation=candidate) == 0
        return power[band & deep_out].mean() / power[band & deep_in].mean()

    assert leak(rotation) < 0.05
    assert leak(rotation.T) > 0.3 and leak(np.eye(3)) > 0.3
    np.testing.assert_array_equal(wedge_mask(BOX, -60, 60, rotation=np.eye(3)), mask)


@pytest.mark.parametrize("low, high", [(60, -60), (-100, 60), (0, 0), (-60, 91)])
def test_bad_tilt_ranges_raise(low, high):
    with pytest.raises(TomosiftError):
        wedge_mask(BOX, low, high)


# -- transforms and RELION angles ---------------------------------------------------------


def test_transform_volume_moves_a_blob_to_r_p_plus_t():
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    p = np.array([5.0, -3.0, 7.0])
    blob = np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / 4.0)
    rotation = Rotation.from_euler("zyz", [30, 50, 70], degrees=True).as_matrix()
    t = np.array([1.0, 2.0, -1.5])
    moved = transform_volume(blob, rotation, t)
    centre = np.array([(moved * a).sum() for a in (x, y, z)]) / moved.sum()
    np.testing.assert_allclose(centre, rotation @ p + t, atol=0.02)
    shifted = shift_volume_fourier(blob, [2, -1, 3])
    np.testing.assert_allclose(shifted, transform_volume(blob, np.eye(3), [2, -1, 3]),
                               atol=1e-4)


def test_relion_angles_round_trip_and_known_matrices(rng):
    for _ in range(50):
        rot, tilt, psi = rng.uniform(-179, 179), rng.uniform(1, 179), rng.uniform(-179, 179)
        matrix = relion_matrix(rot, tilt, psi)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(matrix) == pytest.approx(1.0)
        np.testing.assert_allclose(relion_angles(matrix), (rot, tilt, psi), atol=1e-9)
    np.testing.assert_allclose(relion_matrix(90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]],
                               atol=1e-15)
    np.testing.assert_allclose(relion_matrix(0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]],
                               atol=1e-15)
    for tilt in (0.0, 180.0, 1e-9):  # gimbal lock: the matrix still round-trips
        matrix = relion_matrix(25.0, tilt, -70.0)
        angles = relion_angles(matrix)
        assert angles[0] == 0.0
        np.testing.assert_allclose(relion_matrix(*angles), matrix, atol=1e-8)
    assert rotation_angle_deg(np.eye(3), relion_matrix(0, 0, 37)) == pytest.approx(37.0)


def test_relion_pose_reproduces_the_particle(asymmetric_map, rng):
    truth = Rotation.random(random_state=rng).as_matrix()
    shift = np.array([1.5, -2.0, 0.5])
    particle = transform_volume(asymmetric_map, truth, shift)
    # The alignment that maps the particle back onto the reference:
    rot, tilt, psi, origin = relion_pose(truth.T, -truth.T @ shift)
    np.testing.assert_allclose(relion_matrix(rot, tilt, psi), truth, atol=1e-9)
    np.testing.assert_allclose(origin, shift, atol=1e-9)
    again = transform_volume(asymmetric_map, relion_matrix(rot, tilt, psi), origin)
    assert _correlation(again, particle) > 0.9999


# -- alignment ----------------------------------------------------------------------------


def test_constrained_correlation_is_the_real_space_correlation(rng):
    sphere = wedge_mask(BOX, -90, 90)
    a = apply_mask(rng.standard_normal((BOX,) * 3), sphere)
    b = apply_mask(a + rng.standard_normal((BOX,) * 3), sphere)
    assert constrained_correlation(a, b, None, None) == pytest.approx(_correlation(a, b),
                                                                      abs=1e-5)
    mask = wedge_mask(BOX, -45, 45)
    assert constrained_correlation(a, a, mask, mask) == pytest.approx(1.0, abs=1e-6)
    assert constrained_correlation(a, -a, None, mask) == pytest.approx(-1.0, abs=1e-6)
    # Only the overlap counts: what one wedge holds and the other lacks does not lower it.
    assert constrained_correlation(apply_mask(a, mask), a, mask, None) == pytest.approx(1.0)


def _recovery(volume, trials, rng, snr=None, reference_mask=None, reference=None):
    settings = AlignSettings()
    mask = wedge_mask(BOX, -60, 60)
    prepared = prepare(volume if reference is None else reference, reference_mask, settings)
    good, results = 0, []
    for _ in range(trials):
        particle, rotation, shift = _particle(volume, rng, mask, snr)
        result = align_prepared(prepared, prepare(particle, mask, settings), settings)
        angle = rotation_angle_deg(result.rotation, rotation.T)
        shift_error = np.abs(result.shift_voxels - (-rotation.T @ shift)).max()
        good += angle <= 10.0 and shift_error <= 1.0
        results.append((angle, shift_error, result))
    return good, results


def test_alignment_recovers_random_poses(asymmetric_map, rng):
    good, results = _recovery(asymmetric_map, 8, rng)
    assert good >= 7, [(round(a, 1), round(s, 2)) for a, s, _ in results]
    assert np.median([a for a, _, _ in results]) < 4.0
    for _, _, result in results:
        assert -1.0 <= result.score <= 1.0 and result.score > 0.8


def test_alignment_at_snr_0_1(asymmetric_map, rng):
    good, results = _recovery(asymmetric_map, 8, rng, snr=0.1)
    assert good >= 6, [(round(a, 1), round(s, 2)) for a, s, _ in results]


def test_alignment_to_a_differently_masked_reference(asymmetric_map, rng):
    reference_mask = wedge_mask(BOX, -45, 45)
    reference = apply_mask(asymmetric_map, reference_mask)
    good, results = _recovery(asymmetric_map, 4, rng, reference_mask=reference_mask,
                              reference=reference)
    assert good >= 3, [(round(a, 1), round(s, 2)) for a, s, _ in results]


def test_align_score_is_the_constrained_correlation_at_the_pose(asymmetric_map, rng):
    mask = wedge_mask(BOX, -60, 60)
    particle, _, _ = _particle(asymmetric_map, rng, mask)
    result = align(asymmetric_map, particle, None, mask)
    moved = transform_volume(particle, result.rotation, result.shift_voxels)
    expected = constrained_correlation(asymmetric_map, moved, None,
                                       wedge_mask(BOX, -60, 60, rotation=result.rotation))
    assert result.score == pytest.approx(expected, abs=0.02)
    # The identity is a much worse pose for a random orientation.
    assert constrained_correlation(asymmetric_map, particle, None, mask) < result.score - 0.2


def test_peak_screening_keeps_the_pose_of_a_symmetric_complex(structure_path, rng):
    """Screening picks among the rotation peaks on the 26³ crop; on a D-symmetric complex
    (1bxn) several peaks are right, so the pose is judged by how well the noise-free particle,
    moved by it, matches the map: as well as with every peak checked on the full box."""
    from tomosift.density import DensitySettings, make_density

    volume = make_density(structure_path("1bxn"), DensitySettings())[0]
    mask = wedge_mask(BOX, -60, 60)
    screened, full = AlignSettings(), AlignSettings(screen_peaks=False)
    assert prepare(volume, None, screened).coarse.box == 26
    assert prepare(volume, None, full).coarse is None
    for _ in range(4):
        rotation = Rotation.random(random_state=rng).as_matrix()
        clean = transform_volume(volume, rotation, rng.uniform(-3, 3, size=3))
        noisy = apply_mask(clean + rng.normal(0, np.sqrt(clean.var() / 0.1), clean.shape), mask)
        matches = [_correlation(volume, transform_volume(clean, found.rotation,
                                                         found.shift_voxels))
                   for found in (align(volume, noisy, None, mask, settings)
                                 for settings in (screened, full))]
        assert matches[0] > 0.85 and matches[0] > matches[1] - 0.03, matches


def test_fourier_space_screen_scores_like_the_real_space_check(asymmetric_map, rng):
    """screen_rotation turns the spectrum (trilinear on the 2x oversampled grid) instead of
    the volume: at the true pose and at a wrong one it gives the constrained correlation
    that score_rotation gives on the same cropped volumes, to within a few hundredths."""
    from dataclasses import replace

    from tomosift.discovery.align import score_rotation, screen_rotation

    settings = AlignSettings()
    mask = wedge_mask(BOX, -60, 60)
    particle, rotation, _ = _particle(asymmetric_map, rng, mask, snr=1.0)
    reference = prepare(asymmetric_map, None, settings).coarse
    moving = prepare(particle, mask, settings).coarse
    cropped = replace(settings, score_radius=None, max_shift_voxels=4.0)
    wrong = rotation.T @ Rotation.from_euler("z", 60, degrees=True).as_matrix()
    true_real = score_rotation(reference, moving, rotation.T, cropped)[0]
    true_fourier = screen_rotation(reference, moving, rotation.T, 4.0)
    wrong_real = score_rotation(reference, moving, wrong, cropped)[0]
    wrong_fourier = screen_rotation(reference, moving, wrong, 4.0)
    assert true_fourier == pytest.approx(true_real, abs=0.05)
    assert wrong_fourier == pytest.approx(wrong_real, abs=0.05)
    assert true_fourier > wrong_fourier + 0.2


def test_coarse_box_holds_the_search_shells():
    assert coarse_box(40, AlignSettings()) == 26  # shells 2 .. 12, Nyquist 13
    assert coarse_box(24, AlignSettings(shell_max=10, score_radius=10.0)) == 22
    assert coarse_box(20, AlignSettings(shell_max=9, score_radius=9.0)) == 20  # no crop


def test_neighbourhood_max_is_the_maximum_filter(rng):
    from scipy import ndimage

    scores = rng.random((9, 16, 16)).astype(np.float32)
    expected = ndimage.maximum_filter(scores, size=3, mode=("nearest", "wrap", "wrap"))
    assert np.array_equal(_neighbourhood_max(scores), expected)


def test_harmonic_coefficients_match_a_direct_expansion(rng):
    """prepare() computes only the orders m >= 0 and fills m < 0 by a_l,-m = (-1)^m
    conj(a_lm): the result equals the direct quadrature over every order."""
    from tomosift.classify.rif import amplitude_interpolation_matrix, shell_quadrature
    from tomosift.discovery.align import _harmonics

    settings = AlignSettings(max_degree=8, angular_samples=18, shell_min=4, shell_max=6)
    volume = rng.normal(size=(24, 24, 24)).astype(np.float32)
    prepared = prepare(volume, None, settings)
    spectrum = np.abs(np.fft.rfftn(volume - volume.mean()))
    radius = 5
    theta, phi, weights = shell_quadrature(radius, settings.max_degree)
    direction = np.stack([np.cos(theta), np.sin(theta) * np.sin(phi),
                          np.sin(theta) * np.cos(phi)], axis=1)
    voxels, interp = amplitude_interpolation_matrix(radius * direction, 24)
    values = interp @ spectrum.reshape(-1)[voxels]
    direct = np.einsum("p,p,plm->lm", weights, values,
                       np.conj(_harmonics(theta, phi, settings.max_degree)))
    found = prepared.coefficients[0, radius - settings.shell_min]
    # prepare whitens each shell by one positive factor: compare up to that factor
    scale = found[0, settings.max_degree].real / direct[0, settings.max_degree].real
    assert scale > 0
    np.testing.assert_allclose(found, direct * scale, atol=1e-4 * np.abs(found).max())


def test_align_rejects_bad_input(asymmetric_map):
    with pytest.raises(TomosiftError):
        align(asymmetric_map, asymmetric_map[:-1, :-1, :-1], None, None)
    with pytest.raises(TomosiftError):
        align(asymmetric_map, asymmetric_map, np.ones((BOX, BOX, BOX)), None)
    with pytest.raises(TomosiftError):
        AlignSettings(angular_samples=20)


# -- averaging ----------------------------------------------------------------------------


def _members(volume, count, rng, snr=None):
    mask = wedge_mask(BOX, -60, 60)
    for _ in range(count):
        particle, rotation, shift = _particle(volume, rng, mask, snr)
        yield particle, rotation.T, -rotation.T @ shift


def test_averaging_known_poses_improves_resolution(asymmetric_map, rng):
    members = list(_members(asymmetric_map, 100, rng, snr=0.1))
    volumes = (particle for particle, _, _ in members)  # streamed
    averaged, summed = average(volumes, [m[1] for m in members], [m[2] for m in members])
    assert averaged.shape == (BOX,) * 3 and summed.shape == (BOX, BOX, BOX // 2 + 1)
    assert summed.max() <= 100
    single, _ = average([members[0][0]], [members[0][1]], [members[0][2]])
    resolution_one = resolution_at(*fsc_curve(single, asymmetric_map), 0.5, BOX, VOXEL_NM)
    resolution_all = resolution_at(*fsc_curve(averaged, asymmetric_map), 0.5, BOX, VOXEL_NM)
    assert resolution_all < 0.6 * resolution_one, (resolution_all, resolution_one)
    assert resolution_all < 3.0


def test_averaging_fills_the_missing_wedge(asymmetric_map, rng):
    members = list(_members(asymmetric_map, 20, rng))
    averaged, summed = average((m[0] for m in members), [m[1] for m in members],
                               [m[2] for m in members], tilt_min_deg=-60, tilt_max_deg=60)
    inside = wedge_mask(BOX, -90, 90) > 0
    assert np.mean(summed[inside] > 0) > 0.99
    assert np.mean(summed[inside]) == pytest.approx(20 * 2 / 3, rel=0.05)
    assert np.all(summed[~inside] == 0)
    truth = apply_mask(asymmetric_map, wedge_mask(BOX, -90, 90).astype(np.float32))
    one_member = transform_volume(members[0][0], members[0][1], members[0][2])
    assert _correlation(averaged, truth) > 0.97
    assert _correlation(averaged, truth) > _correlation(one_member, truth) + 0.05
    # Explicit shared masks give the same average (the mask rotated by lookup).
    again, summed_again = average((m[0] for m in members), [m[1] for m in members],
                                  [m[2] for m in members], wedge_mask(BOX, -60, 60))
    assert _correlation(again, averaged) > 0.995
    assert np.abs(summed_again - summed)[inside].mean() < 0.05 * 20


def test_average_rejects_mismatched_input(asymmetric_map):
    with pytest.raises(TomosiftError):
        average([asymmetric_map, asymmetric_map], [np.eye(3)], [np.zeros(3)])
    with pytest.raises(TomosiftError):
        average([asymmetric_map], np.eye(3)[None], np.zeros((2, 3)))
    with pytest.raises(TomosiftError):
        average([], np.zeros((0, 3, 3)), np.zeros((0, 3)))
