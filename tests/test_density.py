"""Density maps from atoms and from maps: mass, centring, size, MRC round trips, bad input."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from tomosift.density import (
    PLATEAU_DENSITY_DA_PER_NM3,
    DensitySettings,
    density_from_map,
    low_pass,
    make_density,
    plateau_density,
)
from tomosift.errors import TomosiftError
from tomosift.io import read_mrc, write_mrc
from tomosift.structures import read_atomic_model

SETTINGS = DensitySettings()
VOXEL_VOLUME_NM3 = SETTINGS.voxel_size_nm**3


def centre_of_mass_voxels(volume: np.ndarray) -> np.ndarray:
    weights = np.clip(volume, 0, None)
    grid = np.indices(volume.shape).reshape(3, -1)
    return (grid * weights.ravel()).sum(axis=1) / weights.sum()


@pytest.fixture(scope="module")
def model_maps(structure_path):
    names = ("3hhb", "1bxn", "3gl1", "4v1w")
    return {name: make_density(structure_path(name), SETTINGS) for name in names}


def test_integral_is_proportional_to_mass(model_maps):
    ratios = [volume.sum() * VOXEL_VOLUME_NM3 / (row.mass_kda * 1000)
              for volume, row in model_maps.values()]
    # Da/nm³ maps: the integral is the mass itself, for every structure
    np.testing.assert_allclose(ratios, 1.0, rtol=1e-3)
    masses = [row.mass_kda for _, row in model_maps.values()]
    assert max(masses) / min(masses) > 5  # a real spread of sizes


def test_centre_of_mass_at_box_centre(model_maps):
    for volume, _ in model_maps.values():
        np.testing.assert_allclose(centre_of_mass_voxels(volume), SETTINGS.box_voxels // 2,
                                   atol=0.5)


def test_radius_of_gyration_matches_atoms(model_maps):
    sigma = SETTINGS.sigma_nm
    n = SETTINGS.box_voxels
    for volume, row in model_maps.values():
        grid = (np.indices(volume.shape).reshape(3, -1).T - n // 2) * SETTINGS.voxel_size_nm
        weights = volume.ravel().astype(np.float64)
        rg_map = np.sqrt(((grid**2).sum(axis=1) * weights).sum() / weights.sum())
        # a Gaussian kernel adds 3 sigma² to the squared radius of gyration
        expected = np.sqrt(row.radius_of_gyration_nm**2 + 3 * sigma**2)
        assert rg_map == pytest.approx(expected, rel=0.10)


def test_known_sizes(model_maps):
    _, haemoglobin = model_maps["3hhb"]
    assert 58 < haemoglobin.mass_kda < 66  # tetramer (64.5 kDa with hydrogens)
    assert 2.2 < haemoglobin.radius_of_gyration_nm < 2.6


def test_mrc_header_and_round_trip(tmp_path, model_maps):
    volume, _ = model_maps["3hhb"]
    path = tmp_path / "3hhb.mrc"
    write_mrc(path, volume, SETTINGS.voxel_size_nm)
    with mrcfile.open(path) as mrc:
        assert mrc.voxel_size.x == pytest.approx(9.2)  # Å in the header
        assert mrc.data.dtype == np.float32
    back, voxel = read_mrc(path)
    assert voxel == pytest.approx(0.92)
    np.testing.assert_array_equal(back, volume)
    first = path.read_bytes()
    write_mrc(path, volume, SETTINGS.voxel_size_nm)
    assert path.read_bytes() == first  # no time stamp in the header


def test_electron_method(structure_path, model_maps):
    settings = DensitySettings(method="electron")
    volume, _ = make_density(structure_path("3hhb"), settings)
    gaussian, _ = model_maps["3hhb"]
    np.testing.assert_allclose(centre_of_mass_voxels(volume), 20, atol=0.5)
    correlation = np.corrcoef(volume.ravel(), gaussian.ravel())[0, 1]
    assert correlation > 0.95  # same atoms, same resolution, different scattering factors


def test_map_input_is_resampled_and_centred(structure_path):
    volume, row = make_density(structure_path("6pxm"), SETTINGS)
    assert volume.shape == (40, 40, 40)
    assert plateau_density(volume) == pytest.approx(PLATEAU_DENSITY_DA_PER_NM3)
    np.testing.assert_allclose(centre_of_mass_voxels(volume), 20, atol=0.5)
    _, voxel = read_mrc(structure_path("6pxm"))
    assert voxel == pytest.approx(1.0)
    # the extent is physical: the same in nm whatever the voxel size
    extent_from_source = row.max_extent_nm
    _, row_again = density_from_map(volume, SETTINGS.voxel_size_nm, SETTINGS)
    assert row_again["max_extent_nm"] == pytest.approx(extent_from_source, rel=0.1)


def test_a_map_gets_the_mass_of_its_atoms(model_maps):
    # an atomic model's density degraded as a typical map (2 nm resolution, 1 nm voxels, any
    # intensity scale) comes back on the Da/nm³ scale: its integral estimates the mass
    for name in ("3hhb", "1bxn"):
        volume, row = model_maps[name]
        blurred = low_pass(volume.astype(np.float64), 0.92, cutoff_per_nm=0.5)
        coarse = ndimage.zoom(blurred, 0.92, order=3) * 0.037  # arbitrary units
        _, stats = density_from_map(coarse, 1.0, SETTINGS, name)
        assert stats["mass_kda"] == pytest.approx(row.mass_kda, rel=0.15), name


def test_map_resampling_preserves_a_known_gaussian():
    # a Gaussian blob of sigma 1.5 nm sampled at 0.5 nm, off-centre: after resampling to 0.92 nm
    # it must be centred and keep its sigma.
    n, voxel = 64, 0.5
    grid = (np.indices((n, n, n)) - np.array([30, 36, 33])[:, None, None, None]) * voxel
    blob = np.exp(-(grid**2).sum(axis=0) / (2 * 1.5**2))
    volume, stats = density_from_map(blob, voxel, SETTINGS)
    np.testing.assert_allclose(centre_of_mass_voxels(volume), 20, atol=0.1)
    assert stats["radius_of_gyration_nm"] == pytest.approx(np.sqrt(3) * 1.5, rel=0.05)


# -- bad input ------------------------------------------------------------------------------


def test_map_with_zero_voxel_size(tmp_path):
    path = tmp_path / "novoxel.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ones((8, 8, 8), dtype=np.float32))
        mrc.voxel_size = 0.0
    with pytest.raises(TomosiftError) as info:
        make_density(path, SETTINGS)
    assert str(path) in str(info.value) and "voxel size is zero or missing" in str(info.value)


def test_map_with_nans(tmp_path):
    data = np.zeros((16, 16, 16), dtype=np.float32)
    data[8, 8, 8] = np.nan
    path = tmp_path / "nan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    with pytest.raises(TomosiftError, match="NaN"):
        make_density(path, SETTINGS)


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "fake.mrc"
    path.write_text("hello")
    with pytest.raises(TomosiftError) as info:
        make_density(path, SETTINGS)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_structure_larger_than_the_box(structure_path):
    model = read_atomic_model(structure_path("6qt9"), "first")  # the whole SH1 virus
    assert model.bounding_box_size_nm().max() > 70
    with pytest.raises(TomosiftError) as info:
        make_density(structure_path("6qt9"), SETTINGS)
    message = str(info.value)
    assert "does not fit the box" in message
    assert "36.8 nm" in message and "40 voxels" in message
    assert "6qt9" in message and "\n" not in message


def test_nothing_written_on_error(tmp_path, structure_path):
    from tomosift.cli import main

    out = tmp_path / "out.mrc"
    assert main(["density", str(structure_path("6qt9")), "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())
