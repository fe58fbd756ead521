"""RELION 5 / WarpTools 2D-stack particles: reading, reconstruction round trips, errors, CLI.

The real export's STAR files (../shared/relion5_example, metadata only) are found beside the
shared structures of $TOMOSIFT_STRUCTURE_DIRS, or at $TOMOSIFT_RELION5_EXAMPLE; tests that
need them skip when they are absent. Everything else is simulated: a chiral map of four
Gaussians is projected through known matrices (:func:`write_stack_export`), imported, and
compared with the map placed as RELION's angles say, filtered by the Fourier coverage that
the tilts give (the missing wedge is not the importer's fault).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from tomosift.cli import main
from tomosift.discovery.particles import load_particles
from tomosift.discovery.rotations import relion_matrix, transform_volume
from tomosift.errors import TomosiftError
from tomosift.structures import STRUCTURE_DIRS_ENV
from tomosift.tomograms import stacks as S
from tomosift.tomograms.imports import import_particles

BOX = 32
PIXEL_A = 5.0
ANGLES = (30.0, 70.0, -20.0)
ORIGIN_A = (10.0, -15.0, 5.0)
EXAMPLE_STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"


def example_dir() -> Path | None:
    """../shared/relion5_example, located without a hard-coded path."""
    candidates = [os.environ.get("TOMOSIFT_RELION5_EXAMPLE", "")]
    for folder in os.environ.get(STRUCTURE_DIRS_ENV, "").split(":"):
        if folder.strip():
            candidates.append(str(Path(folder).resolve().parent / "relion5_example"))
    for candidate in candidates:
        if candidate and (Path(candidate) / f"{EXAMPLE_STEM}_tomograms.star").is_file():
            return Path(candidate)
    return None


def chiral_map(n: int = BOX) -> np.ndarray:
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    out = np.zeros((n, n, n))
    for (cx, cy, cz), sigma, amplitude in [((4, 0, 0), 2.5, 1.0), ((-3, 4, 1), 2.0, 0.8),
                                           ((-2, -3, 4), 1.8, 0.6), ((0, 1, -5), 2.2, 0.9)]:
        out += amplitude * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
                                  / (2 * sigma**2))
    return out.astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def truth_in(coverage: np.ndarray, angles=ANGLES, n: int = BOX) -> np.ndarray:
    """The map placed by RELION's matrix, filtered to the observed Fourier voxels."""
    placed = transform_volume(chiral_map(n), relion_matrix(*angles))
    spectrum = np.fft.rfftn(np.fft.ifftshift(placed), axes=(0, 1, 2)) * (coverage > 0)
    return np.fft.fftshift(np.fft.irfftn(spectrum, s=placed.shape, axes=(0, 1, 2)))


def synthetic_series(hand: float = -1.0) -> S.TiltSeries:
    return S.simulated_tilt_series("TS_01", np.arange(-60, 61, 3), 30000.0, 3.0,
                                   (2000, 2000, 1200), PIXEL_A, hand=hand, axis_angle_deg=85)


def synthetic_export(tmp_path, premultiplied=True, layout="all", visible=None,
                     centred=(100.0, -200.0, 2500.0)):
    series = synthetic_series()
    optics = S.StackOptics(PIXEL_A, BOX, 300.0, 2.7, 0.07, premultiplied)
    if visible is None:
        visible = np.ones(series.n_tilts, dtype=bool)
        visible[[19, 20, 21]] = False  # the three least-tilted images: much weight
    particle = S.ExportParticle("TS_01", 0, centred, ANGLES, ORIGIN_A, visible, class_number=1)
    return S.write_stack_export(tmp_path, "sim", [chiral_map()], {"TS_01": series},
                                [particle], optics, stack_layout=layout), series


def imported_score(stacks: S.StackParticles, coverage: np.ndarray) -> float:
    volume, _ = S.reconstruct_index(stacks, 0)
    return correlation(volume, truth_in(coverage))


# -- reading the real export ------------------------------------------------------------------

def test_reads_the_warptools_example():
    folder = example_dir()
    if folder is None:
        pytest.skip("../shared/relion5_example not found (set TOMOSIFT_RELION5_EXAMPLE)")
    optimisation = folder / f"{EXAMPLE_STEM}_optimisation_set.star"
    assert S.is_optimisation_set(optimisation)
    assert S.is_2d_stack_star(folder / f"{EXAMPLE_STEM}.star")
    stacks = S.read_stack_particles(optimisation, check_images=False)
    assert len(stacks) == 40 and len(stacks.tomograms) == 4
    series = stacks.tomograms["Unt_083.tomostar"]
    assert series.n_tilts == 37 and series.hand == -1.0
    assert series.size_xyz == (4400, 6000, 1400) and series.pixel_size_a == pytest.approx(1.667)
    rotations = series.rotations
    assert np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert series.tilt_angles_deg.max() == pytest.approx(76.1, abs=1.0)
    assert series.pre_exposure_e_per_a2.min() == 0 and series.ctf_scale[0] == 0
    optics = stacks.optics_of(0)
    assert optics.premultiplied and optics.box_pixels == 32 and optics.pixel_size_a == 12.0
    assert optics.binning == pytest.approx(7.19856)
    # Unt_083's particles were not seen in frames 0, 5 and 35, the frames of CTF scale 0.
    assert np.flatnonzero(~stacks.visible[0]).tolist() == [0, 5, 35]
    assert np.all(series.ctf_scale[~stacks.visible[0]] == 0)
    # WarpTools coordinates are pixels of 12 Å from the corner: inside the tomogram.
    half_a = np.array(series.size_xyz) * series.pixel_size_a / 2
    assert np.all(np.abs(stacks.centred_a) <= half_a)
    defocus = stacks.defocus_um()
    assert np.all((defocus > 2.4) & (defocus < 3.2))


def test_round_trip_through_the_real_matrices(tmp_path):
    """Project a map through the export's real projection matrices, defocus, dose and
    visibility, write the stacks and STAR files, import: the particle comes back."""
    folder = example_dir()
    if folder is None:
        pytest.skip("../shared/relion5_example not found (set TOMOSIFT_RELION5_EXAMPLE)")
    real = S.read_stack_particles(folder / f"{EXAMPLE_STEM}_optimisation_set.star",
                                  check_images=False)
    optics = real.optics_of(0)
    chosen = [0, 12, 25]  # three tomograms
    particles = [S.ExportParticle(str(real.table["rlnTomoName"].iloc[i]), 0,
                                  tuple(real.centred_a[i]), ANGLES, (0.0, 0.0, 0.0),
                                  real.visible[i]) for i in chosen]
    optimisation = S.write_stack_export(tmp_path, "warp", [chiral_map()], real.tomograms,
                                        particles, optics)
    stacks = S.read_stack_particles(optimisation)
    for index in range(len(chosen)):
        volume, coverage = S.reconstruct_index(stacks, index)
        assert correlation(volume, truth_in(coverage)) > 0.85


# -- the round trip and what it must catch ----------------------------------------------------

@pytest.mark.parametrize("premultiplied", [True, False])
def test_round_trip_recovers_the_particle(tmp_path, premultiplied):
    optimisation, _ = synthetic_export(tmp_path, premultiplied)
    stacks = S.read_stack_particles(optimisation)
    volume, coverage = S.reconstruct_index(stacks, 0)
    assert volume.shape == (BOX,) * 3 and coverage.shape == (BOX, BOX, BOX // 2 + 1)
    assert correlation(volume, truth_in(coverage)) > 0.9
    # The particle is white (RELION's stored contrast) and centred by its origin.
    z, y, x = np.unravel_index(np.argmax(volume), volume.shape)
    assert volume.max() > 0 and abs(volume.max()) > abs(volume.min())
    assert np.hypot(np.hypot(x - BOX // 2, y - BOX // 2), z - BOX // 2) < 8
    # Coverage: the summed (CTF x dose)², zero in the missing wedge.
    assert coverage.min() >= 0 and np.mean(coverage == 0) > 0.1


def test_round_trip_catches_hand_shift_mirror_and_invisible_frames(tmp_path):
    optimisation, series = synthetic_export(tmp_path)
    stacks = S.read_stack_particles(optimisation)
    _, coverage = S.reconstruct_index(stacks, 0)
    base = imported_score(stacks, coverage)
    assert base > 0.9

    # rlnTomoHand flips the defocus gradient with depth: the particle lies 2500 Å deep.
    flipped = copy.deepcopy(stacks)
    flipped.tomograms["TS_01"] = dataclasses.replace(series, hand=-series.hand)
    assert imported_score(flipped, coverage) < base - 0.02

    # The origin's sign: the particle sits at coordinate - origin.
    wrong_shift = copy.deepcopy(stacks)
    wrong_shift.table.loc[0, list(S.ORIGIN_COLUMNS)] *= -1
    assert imported_score(wrong_shift, coverage) < base - 0.3

    # The hand of the geometry: mirrored projection matrices give the mirror image.
    mirrored = copy.deepcopy(stacks)
    projections = series.projections.copy()
    projections[:, :3, 2] *= -1
    mirrored.tomograms["TS_01"] = dataclasses.replace(series, projections=projections)
    assert imported_score(mirrored, coverage) < base - 0.1

    # An invisible frame's image shows something else: it must stay out.
    path = stacks.images[0]
    with mrcfile.open(path, mode="r+") as mrc:
        data = np.array(mrc.data)
        hidden = ~stacks.visible[0]
        data[hidden] = np.random.default_rng(3).normal(0, 5 * data.std(),
                                                       data[hidden].shape)
        mrc.set_data(data.astype(np.float32))
    assert imported_score(stacks, coverage) == pytest.approx(base, abs=1e-6)
    everything = copy.deepcopy(stacks)
    everything.visible[0] = np.ones_like(everything.visible[0])
    assert imported_score(everything, coverage) < base - 0.05


def test_relion_stacks_of_visible_frames_only_give_the_same_volume(tmp_path):
    all_frames, _ = synthetic_export(tmp_path / "all")
    visible_only, _ = synthetic_export(tmp_path / "visible", layout="visible")
    first, _ = S.reconstruct_index(S.read_stack_particles(all_frames), 0)
    second, _ = S.reconstruct_index(S.read_stack_particles(visible_only), 0)
    with mrcfile.open(next((tmp_path / "visible").rglob("*.mrcs"))) as mrc:
        assert len(mrc.data) == synthetic_series().n_tilts - 3
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_dose_weight_is_grant_and_grigorieff():
    k = np.array([0.0, 0.1, 0.25])
    expected = np.exp(-0.5 * 40.0 / (0.245 * k[1:] ** -1.665 + 2.81))
    weights = S.dose_weight(k, 40.0)
    assert weights[0] == 1.0
    np.testing.assert_allclose(weights[1:], expected)
    np.testing.assert_allclose(S.dose_weight(k, 40.0, bfactor_per_dose_a2=4.0),
                               np.exp(-4.0 * 40.0 * k**2 / 4))


# -- errors -----------------------------------------------------------------------------------

def test_errors_are_one_line_and_write_nothing(tmp_path):
    optimisation, _ = synthetic_export(tmp_path / "export")
    particles = tmp_path / "export" / "sim.star"
    out = tmp_path / "out.h5"

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "sim.star").write_text(particles.read_text())
    with pytest.raises(TomosiftError, match=r"sim\.star: the subtomograms are 2D stacks .* "
                                            r"tomograms file"):
        import_particles(lonely / "sim.star", out, progress=False)
    with pytest.raises(TomosiftError, match=r"nothere\.star: tomograms file not found"):
        import_particles(particles, out, tomograms=tmp_path / "nothere.star", progress=False)
    broken = tmp_path / "export" / "broken_optimisation_set.star"
    broken.write_text("data_\n_rlnTomoParticlesFile sim.star\n"
                      "_rlnTomoTomogramsFile gone_tomograms.star\n")
    with pytest.raises(TomosiftError, match=r"broken_optimisation_set\.star: names "
                                            r".*gone_tomograms\.star, which is not found"):
        import_particles(broken, out, progress=False)

    blocks = starfile.read(particles, always_dict=True)
    blocks["particles"]["rlnTomoName"] = "TS_99"
    starfile.write(blocks, tmp_path / "export" / "other.star")
    with pytest.raises(TomosiftError, match=r"other\.star: tomogram TS_99 is not listed in "
                                            r".*sim_tomograms\.star"):
        import_particles(tmp_path / "export" / "other.star", out, progress=False,
                         tomograms=tmp_path / "export" / "sim_tomograms.star")

    stack = next((tmp_path / "export").rglob("*.mrcs"))
    with mrcfile.open(stack, mode="r+") as mrc:
        mrc.set_data(np.array(mrc.data)[:-5])
    with pytest.raises(TomosiftError, match=r"\.mrcs: 36 images, but its tomogram has 41 "
                                            r"tilts \(38 visible\)"):
        import_particles(optimisation, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# -- end to end -------------------------------------------------------------------------------

def test_cli_import_dataset_and_back_to_relion(tmp_path, capsys):
    from tomosift.subdivide.outputs import particle_metadata, particles_table, write_subsets
    from tomosift.subdivide.shards import data_geometry

    optimisation, series = synthetic_export(tmp_path / "export")
    out = tmp_path / "particles.h5"
    # RELION's depth term: defocus + hand * (Z row . position), over the visible tilts.
    position = np.subtract((100.0, -200.0, 2500.0), ORIGIN_A)
    visible = np.ones(series.n_tilts, dtype=bool)
    visible[[19, 20, 21]] = False
    expected_um = np.mean(30000.0 + series.hand * series.rotations[visible, 2] @ position) / 1e4
    assert main(["import-particles", str(optimisation), "--out", str(out)]) == 0
    assert "1 subtomograms of 32³ voxels at 0.5 nm imported" in capsys.readouterr().out
    with h5py.File(out) as h5:
        assert h5["volumes"].shape == (1, BOX, BOX, BOX)
        weights = h5["fourier_weights"]
        assert weights.shape == (1, BOX, BOX, BOX // 2 + 1) and weights.dtype == np.float32
        assert weights.chunks == (1, BOX, BOX, BOX // 2 + 1)
        assert bool(h5.attrs["ctf_corrected"]) and h5.attrs["polarity"] == "white"
        assert h5.attrs["tilt_max_deg"] == pytest.approx(60.0)
        assert h5["particles/defocus_um"][0] == pytest.approx(expected_um)
        assert expected_um < 2.9  # hand -1: the deep particle is nearer focus
        centred = h5["particles/centered_angst"][0]
        np.testing.assert_allclose(centred, position)
        assert correlation(h5["volumes"][0], truth_in(weights[0])) > 0.9

    # particles.star + --tomograms gives the same dataset's volumes.
    second = tmp_path / "second.h5"
    assert main(["import-particles", str(tmp_path / "export" / "sim.star"), "--tomograms",
                 str(tmp_path / "export" / "sim_tomograms.star"), "--out", str(second)]) == 0
    with h5py.File(out) as a, h5py.File(second) as b:
        np.testing.assert_array_equal(a["volumes"][()], b["volumes"][()])

    # Back to RELION 5: the subsets keep the tomogram, the position and the angles.
    meta = particle_metadata(out)
    table = particles_table(np.array([0]), np.array([1]), np.array([0.0]), meta, None)
    written = write_subsets(tmp_path / "subsets", table, PIXEL_A / 10, BOX,
                            data_geometry(out)["optics_columns"])
    blocks = starfile.read(written[1], always_dict=True)
    back = blocks["particles"]
    # relion_tomo_subtomo needs the tilt series' pixel size and the microscope to re-extract
    optics = blocks["optics"].iloc[0]
    with h5py.File(out) as h5:
        assert optics["rlnTomoTiltSeriesPixelSize"] == pytest.approx(
            h5.attrs["tilt_series_pixel_size_a"])
    assert optics["rlnVoltage"] == pytest.approx(300.0)
    assert back["rlnTomoName"].iloc[0] == "TS_01"
    np.testing.assert_allclose(
        back[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
              "rlnCenteredCoordinateZAngst"]].to_numpy()[0], centred, atol=1e-3)
    angles = back[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[0]
    np.testing.assert_allclose(relion_matrix(*angles), relion_matrix(*ANGLES), atol=1e-6)


def test_cli_error_is_one_line(tmp_path, capsys):
    optimisation, _ = synthetic_export(tmp_path / "export")
    (tmp_path / "export" / "sim_tomograms.star").unlink()
    assert main(["import-particles", str(optimisation), "--out", str(tmp_path / "x.h5")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "sim_tomograms.star" in error


def test_average_data_reads_2d_stacks(tmp_path):
    optimisation, _ = synthetic_export(tmp_path)
    particles = load_particles([optimisation])
    assert particles.volumes.shape == (1, BOX, BOX, BOX)
    assert particles.fourier_weights.shape == (1, BOX, BOX, BOX // 2 + 1)
    assert particles.voxel_size_nm == pytest.approx(0.5)
    assert particles.labels.tolist() == [0]
    assert particles.tilt_range_deg == pytest.approx((-60.0, 60.0))
    also = load_particles([tmp_path / "sim.star"])  # the tomograms file found beside it
    np.testing.assert_array_equal(also.volumes, particles.volumes)


def test_subdivide_imports_2d_stacks(tmp_path):
    from tomosift.subdivide.run import dataset_of

    optimisation, _ = synthetic_export(tmp_path / "export")
    data = dataset_of(optimisation, tmp_path / "out", progress=False)
    with h5py.File(data) as h5:
        assert "fourier_weights" in h5 and h5["volumes"].shape[0] == 1


def test_written_star_files_follow_the_example_layout(tmp_path):
    optimisation, _ = synthetic_export(tmp_path)
    blocks = starfile.read(tmp_path / "sim.star", always_dict=True)
    assert blocks["general"][S.STACK_FLAG] == 1
    optics = blocks["optics"]
    assert optics["rlnImageDimensionality"].iloc[0] == 2
    assert int(optics["rlnCtfDataAreCtfPremultiplied"].iloc[0]) == 1
    tomograms = starfile.read(tmp_path / "sim_tomograms.star", always_dict=True)
    assert list(tomograms) == ["global", "TS_01"]
    tilts = tomograms["TS_01"]
    assert isinstance(tilts, pd.DataFrame) and len(tilts) == 41
    assert str(tilts["rlnTomoProjW"].iloc[0]) == "[0,0,0,1]"
    assert S.read_optimisation_set(optimisation)[1].name == "sim_tomograms.star"
