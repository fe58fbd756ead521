"""tomosift extract (tomogram + picks -> dataset) and tomosift import-particles."""

from __future__ import annotations

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest

from tomosift.classify.inputs import fourier_crop, read_split
from tomosift.cli import main
from tomosift.datasets import class_names_of, open_dataset
from tomosift.errors import TomosiftError
from tomosift.io import write_mrc, write_star
from tomosift.tomograms.extract import extract_subtomograms
from tomosift.tomograms.imports import import_particles
from tomosift.tomograms.records import stratified_split
from tomosift.tomograms.relion import (
    CENTERED_COLUMNS,
    centered_angstrom,
    particle_table,
    read_particles_star,
    write_particles_star,
)

VOXEL_NM = 0.46
SIZE = 96
BOX = 16
BLOBS = np.array([[30, 30, 30], [64, 34, 30], [30, 64, 62]], dtype=np.float64)  # x, y, z
NOISE_CENTRE = np.array([64.0, 64.0, 64.0])  # a patch of white noise, no blob
EDGE_PICKS = np.array([[4.0, 48.0, 48.0], [92.0, 48.0, 48.0]])


def _tomogram() -> np.ndarray:
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE].astype(np.float64)
    volume = np.zeros((SIZE, SIZE, SIZE))
    for bx, by, bz in BLOBS:
        volume += np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * 2.0**2))
    rng = np.random.default_rng(7)
    volume[52:76, 52:76, 52:76] += rng.normal(0, 1, (24, 24, 24))
    return volume.astype(np.float32)


@pytest.fixture
def tomo(tmp_path):
    path = tmp_path / "TS_01.mrc"
    write_mrc(path, _tomogram(), VOXEL_NM)
    return path


def _write_picks(path, xyz, tomo_name="TS_01", class_numbers=None, class_names=None,
                 angles=None):
    table = particle_table(tomo_name, xyz, (SIZE,) * 3, VOXEL_NM, angles_deg=angles,
                           class_numbers=class_numbers)
    write_particles_star(path, table, VOXEL_NM, BOX, class_names)
    return path


def _centre_of_mass_zyx(volume: np.ndarray) -> np.ndarray:
    grid = np.indices(volume.shape).reshape(3, -1)
    weights = np.clip(volume, 0, None).ravel().astype(np.float64)
    return grid @ weights / weights.sum()


@pytest.mark.parametrize(("target_nm", "voxel_nm", "binning"), [
    (None, VOXEL_NM, 1.0),
    (2 * VOXEL_NM, 2 * VOXEL_NM, 2.0),
    (1.3 * VOXEL_NM, VOXEL_NM * 20 / 16, 1.25),  # B0 = even nearest 16 * 1.3 = 20.8 -> 20
])
def test_extracted_boxes_are_centred_on_the_blobs(tmp_path, tomo, target_nm, voxel_nm, binning):
    picks = _write_picks(tmp_path / "picks.star", BLOBS)
    out = tmp_path / "d.h5"
    summary = extract_subtomograms(tomo, picks, out, box_voxels=BOX, voxel_size_nm=target_nm,
                                   progress=False)
    assert summary.n_extracted == 3 and summary.n_skipped_edge == 0
    assert summary.binning == pytest.approx(binning)
    assert summary.voxel_size_nm == pytest.approx(voxel_nm)
    with open_dataset(out) as h5:
        volumes = h5["volumes"][()]
        assert volumes.shape == (3, BOX, BOX, BOX) and h5["volumes"].chunks == (1, BOX, BOX, BOX)
        assert h5.attrs["voxel_size_nm"] == pytest.approx(voxel_nm)
        assert h5.attrs["binning"] == pytest.approx(binning)
        assert h5.attrs["polarity"] == "dark" and h5.attrs["tilt_max_deg"] == 60.0
        assert not h5.attrs["labels_known"]
    for volume in volumes:
        np.testing.assert_allclose(_centre_of_mass_zyx(volume), BOX // 2, atol=0.5)
        assert volume.max() == pytest.approx(volume[BOX // 2, BOX // 2, BOX // 2], rel=1e-6)


def test_unbinned_extraction_copies_the_tomogram_exactly(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS[:1])
    out = tmp_path / "d.h5"
    extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    with h5py.File(out) as h5:
        np.testing.assert_array_equal(h5["volumes"][0], _tomogram()[22:38, 22:38, 22:38])


def test_fourier_crop_keeps_the_mean_and_the_low_frequencies():
    rng = np.random.default_rng(3)
    volume = rng.normal(2.0, 1.0, (20, 20, 20))
    cropped = fourier_crop(volume[None], 16)[0]
    assert cropped.mean() == pytest.approx(volume.mean(), rel=1e-5)
    spectrum = np.fft.fftn(volume) * (16 / 20) ** 3
    np.testing.assert_allclose(np.fft.fftn(cropped)[1:4, 2, 3], spectrum[1:4, 2, 3], rtol=1e-4)


def test_smoothing_follows_a_gaussian(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", NOISE_CENTRE[None])
    sigma_nm = 1.0
    raw, smooth = tmp_path / "raw.h5", tmp_path / "smooth.h5"
    extract_subtomograms(tomo, picks, raw, box_voxels=BOX, progress=False)
    extract_subtomograms(tomo, picks, smooth, box_voxels=BOX, smooth_sigma_nm=sigma_nm,
                         progress=False)
    with h5py.File(raw) as a, h5py.File(smooth) as b:
        assert b.attrs["smooth_sigma_nm"] == sigma_nm
        power_raw = np.abs(np.fft.fftn(a["volumes"][0])) ** 2
        power_smooth = np.abs(np.fft.fftn(b["volumes"][0])) ** 2
    k = np.fft.fftfreq(BOX)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shell = (radius > 0.11) & (radius < 0.13)
    sigma_voxels = sigma_nm / VOXEL_NM
    # white noise: the shell's power falls by the mean of the Gaussian's squared transfer
    expected = np.exp(-4 * np.pi**2 * sigma_voxels**2 * radius[shell] ** 2).mean()
    ratio = power_smooth[shell].sum() / power_raw[shell].sum()
    assert ratio == pytest.approx(expected, rel=0.1)
    assert ratio < 0.2  # a real reduction, not a rounding effect


def test_edge_particles_are_skipped_and_counted(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", np.vstack([BLOBS, EDGE_PICKS]))
    out = tmp_path / "d.h5"
    summary = extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    assert (summary.n_extracted, summary.n_skipped_edge) == (3, 2)
    with h5py.File(out) as h5:
        assert h5.attrs["n_skipped_edge"] == 2
        np.testing.assert_array_equal(h5["particles/coordinates_voxels"][()], BLOBS)
    edge_only = _write_picks(tmp_path / "edge.star", EDGE_PICKS)
    with pytest.raises(TomosiftError, match="edge"):
        extract_subtomograms(tomo, edge_only, tmp_path / "e.h5", box_voxels=BOX, progress=False)
    assert not (tmp_path / "e.h5").exists()


def test_unknown_labels_make_a_test_only_dataset(tmp_path, tomo):
    angles = np.array([[10.0, 20.0, 30.0], [0, 90, 0], [5, 5, 5]])
    picks = _write_picks(tmp_path / "picks.star", BLOBS, angles=angles)
    out = tmp_path / "d.h5"
    extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    data = read_split(out, "all")
    assert data.box_voxels == BOX and len(data.indices) == 3 and data.class_names == []
    np.testing.assert_array_equal(data.labels, -1)
    with pytest.raises(TomosiftError, match="train split is empty"):
        read_split(out, "train")
    with h5py.File(out) as h5:
        group = h5["particles"]
        assert [n.decode() for n in group["tomo_name"][()]] == ["TS_01"] * 3
        assert [n.decode() for n in group["image_name"][()]] == [""] * 3
        np.testing.assert_array_equal(group["tomogram_size_xyz"][()], [[SIZE] * 3] * 3)
        np.testing.assert_allclose(group["angles_deg"][()], angles)
        assert group.attrs["tomogram_voxel_size_nm"] == pytest.approx(VOXEL_NM)
        np.testing.assert_allclose(group["centered_angst"][()],
                                   centered_angstrom(BLOBS, (SIZE,) * 3, VOXEL_NM))
        assert h5.attrs["source"] == str(tomo)


def test_labels_from_truth_with_a_false_pick(tmp_path, tomo):
    truth = _write_picks(tmp_path / "truth.star", BLOBS, class_numbers=[1, 2, 1],
                         class_names=["alpha", "beta"])
    # three picks near the true particles, one false
    picked = np.vstack([BLOBS + np.array([1.0, 0.0, 0.0]), NOISE_CENTRE])
    picks = _write_picks(tmp_path / "picks.star", picked)
    out = tmp_path / "d.h5"
    summary = extract_subtomograms(tomo, picks, out, box_voxels=BOX, truth_path=truth,
                                   progress=False)
    assert summary.labels_known and summary.n_classes == 3
    with open_dataset(out) as h5:
        assert class_names_of(h5) == ["alpha", "beta", "false_pick"]
        np.testing.assert_array_equal(h5["labels"][()], [0, 1, 0, 2])
        assert h5["labels"].dtype == np.int16
        split = h5["split"][()].astype(str)
        assert bool(h5.attrs["labels_known"])
    # class alpha (2 members): one test; beta and false_pick (1 member): round(0.5) = 0 test
    assert split[[0, 2]].tolist().count("test") == 1 and split[[1, 3]].tolist() == ["train"] * 2
    assert len(read_split(out, "train").indices) == 3


def test_labels_from_the_picks_class_numbers(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS, class_numbers=[3, 7, 3])
    out = tmp_path / "d.h5"
    extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    with open_dataset(out) as h5:
        assert class_names_of(h5) == ["3", "7"]
        np.testing.assert_array_equal(h5["labels"][()], [0, 1, 0])


def test_only_the_tomograms_own_picks(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS, tomo_name=["TS_01", "TS_02", "TS_01"])
    out = tmp_path / "d.h5"
    summary = extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    assert summary.n_extracted == 2
    other = _write_picks(tmp_path / "other.star", BLOBS[:2], tomo_name=["TS_02", "TS_03"])
    with pytest.raises(TomosiftError, match=r"other\.star: no particles of tomogram 'TS_01'"):
        extract_subtomograms(tomo, other, out, box_voxels=BOX, progress=False)
    # one tomogram named, not this one: refused, naming both files and both names
    single = _write_picks(tmp_path / "single.star", BLOBS, tomo_name="TS_09")
    with pytest.raises(TomosiftError, match=r"single\.star: .*'TS_09', but .*TS_01\.mrc is "
                                            r"'TS_01'"):
        extract_subtomograms(tomo, single, out, box_voxels=BOX, progress=False)
    # empty names and the file's name are taken as they are
    for name, path in (("", "empty.star"), ("TS_01.mrc", "named.star")):
        picks = _write_picks(tmp_path / path, BLOBS, tomo_name=name)
        assert extract_subtomograms(tomo, picks, out, box_voxels=BOX,
                                    progress=False).n_extracted == 3


def test_split_matches_the_simulated_datasets_choice():
    from tomosift.datasets import DatasetPlan

    labels = np.repeat([0, 1], 10)
    split = stratified_split(labels, 0.5, seed=4)
    plan = DatasetPlan(("a", "b"), 10, 1.0, seed=4, empty_class=False)
    for label in (0, 1):
        np.testing.assert_array_equal(split[labels == label] == b"test", plan.is_test(label))


def test_same_inputs_give_the_same_bytes(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS, class_numbers=[1, 2, 1])
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (first, second):
        extract_subtomograms(tomo, picks, out, box_voxels=BOX, voxel_size_nm=0.92,
                             progress=False)
    assert first.read_bytes() == second.read_bytes()


def test_float16_volumes(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS)
    out = tmp_path / "d.h5"
    extract_subtomograms(tomo, picks, out, box_voxels=BOX, dtype="float16", progress=False)
    with h5py.File(out) as h5:
        assert h5["volumes"].dtype == np.float16 and h5.attrs["volume_dtype"] == "float16"


@pytest.mark.filterwarnings("ignore:Expected .* bytes in data block")
def test_bad_extraction_inputs(tmp_path, tomo):
    out = tmp_path / "d.h5"
    no_coordinates = tmp_path / "nocoord.star"
    write_star(no_coordinates, {"particles": pd.DataFrame({"rlnTomoName": ["TS_01"],
                                                           "rlnAngleRot": [0.0]})})
    with pytest.raises(TomosiftError, match=r"nocoord\.star: no coordinates"):
        extract_subtomograms(tomo, no_coordinates, out, box_voxels=BOX, progress=False)
    empty = tmp_path / "empty.star"
    write_star(empty, {"particles": pd.DataFrame({"rlnCoordinateX": []})})
    with pytest.raises(TomosiftError, match="no particles"):
        extract_subtomograms(tomo, empty, out, box_voxels=BOX, progress=False)
    picks = _write_picks(tmp_path / "picks.star", BLOBS)
    with pytest.raises(TomosiftError, match=r"TS_01\.mrc: target voxel size .* does not upsample"):
        extract_subtomograms(tomo, picks, out, box_voxels=BOX, voxel_size_nm=0.3,
                             progress=False)
    truncated = tmp_path / "cut.mrc"
    truncated.write_bytes(tomo.read_bytes()[: 1024 + 1000])
    with pytest.raises(TomosiftError, match=r"cut\.mrc: not a readable MRC"):
        extract_subtomograms(truncated, picks, out, box_voxels=BOX, progress=False)
    no_voxel = tmp_path / "novoxel.mrc"
    with mrcfile.new(no_voxel) as mrc:
        mrc.set_data(np.zeros((8, 8, 8), dtype=np.float32))
        mrc.voxel_size = 0.0
    with pytest.raises(TomosiftError, match=r"novoxel\.mrc: the header's voxel size"):
        extract_subtomograms(no_voxel, picks, out, box_voxels=BOX, progress=False)
    assert not out.exists()


# -- import --------------------------------------------------------------------------------

IMPORT_BOX = 8
IMPORT_VOXEL_NM = 0.92


def _subtomograms(folder, n, seed=0, box=IMPORT_BOX):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, volumes = [], []
    for i in range(n):
        volume = rng.normal(0, 1, (box,) * 3).astype(np.float32)
        path = folder / f"particle_{i:03d}.mrc"
        write_mrc(path, volume, IMPORT_VOXEL_NM)
        paths.append(path)
        volumes.append(volume)
    return paths, np.stack(volumes)


def _import_star(tmp_path, paths, class_numbers=None, class_names=None, names=None):
    xyz = np.arange(3 * len(paths), dtype=np.float64).reshape(-1, 3) + 20
    table = particle_table(["TS_01"] * len(paths), xyz, (SIZE,) * 3, VOXEL_NM,
                           angles_deg=np.full((len(paths), 3), 15.0), class_numbers=class_numbers,
                           extra={"rlnImageName": names or [f"Subtomograms/{p.name}"
                                                            for p in paths]})
    star = tmp_path / "particles.star"
    write_particles_star(star, table, IMPORT_VOXEL_NM, IMPORT_BOX, class_names)
    return star, xyz


def test_import_from_a_star_round_trips(tmp_path):
    paths, volumes = _subtomograms(tmp_path / "Subtomograms", 6)
    star, xyz = _import_star(tmp_path, paths, class_numbers=[1, 2, 1, 2, 1, 2],
                             class_names=["ribosome", "proteasome"])
    out = tmp_path / "d.h5"
    summary = import_particles(star, out, progress=False)
    assert (summary.n_imported, summary.box_voxels, summary.labels_known) == (6, IMPORT_BOX, True)
    with open_dataset(out) as h5:
        np.testing.assert_array_equal(h5["volumes"][()], volumes)
        assert class_names_of(h5) == ["ribosome", "proteasome"]
        np.testing.assert_array_equal(h5["labels"][()], [0, 1, 0, 1, 0, 1])
        split = h5["split"][()].astype(str)
        assert h5.attrs["voxel_size_nm"] == pytest.approx(IMPORT_VOXEL_NM)
        assert h5.attrs["polarity"] == "white"
        group = h5["particles"]
        np.testing.assert_allclose(group["coordinates_voxels"][()], xyz)
        np.testing.assert_allclose(group["angles_deg"][()], 15.0)
        assert [n.decode() for n in group["image_name"][()]] == [str(p) for p in paths]
        np.testing.assert_array_equal(group["tomogram_size_xyz"][()], 0)
        assert np.isnan(group.attrs["tomogram_voxel_size_nm"])
        np.testing.assert_allclose(group["centered_angst"][()],
                                   centered_angstrom(xyz, (SIZE,) * 3, VOXEL_NM))
    for label in (0, 1):  # three per class: round(1.5) = 2 in the test split
        assert (split[[label, label + 2, label + 4]] == "test").sum() == 2
    import_particles(star, tmp_path / "again.h5", progress=False)
    assert out.read_bytes() == (tmp_path / "again.h5").read_bytes()
    import_particles(star, out, labels=False, progress=False)
    with open_dataset(out) as h5:
        assert class_names_of(h5) == [] and set(h5["split"][()].astype(str)) == {"test"}
        np.testing.assert_array_equal(h5["labels"][()], -1)


def test_import_from_class_folders(tmp_path):
    _, first = _subtomograms(tmp_path / "classes" / "b_second", 2, seed=1)
    _, second = _subtomograms(tmp_path / "classes" / "a_first", 3, seed=2)
    out = tmp_path / "d.h5"
    summary = import_particles(tmp_path / "classes", out, polarity="dark", progress=False)
    assert summary.n_imported == 5 and summary.n_classes == 2
    data = read_split(out, "all")
    assert data.class_names == ["a_first", "b_second"]
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
    with open_dataset(out) as h5:
        np.testing.assert_array_equal(h5["volumes"][()], np.concatenate([second, first]))
        assert h5.attrs["polarity"] == "dark"
        assert np.isnan(h5["particles/coordinates_voxels"][()]).all()
    assert len(read_split(out, "train").indices) == 2  # round(1.5) = 2, round(1) = 1 test


def test_import_from_a_plain_folder(tmp_path):
    _, volumes = _subtomograms(tmp_path / "plain", 3)
    out = tmp_path / "d.h5"
    summary = import_particles(tmp_path / "plain", out, progress=False)
    assert not summary.labels_known
    with open_dataset(out) as h5:
        np.testing.assert_array_equal(h5["volumes"][()], volumes)
        np.testing.assert_array_equal(h5["labels"][()], -1)


def test_bad_import_inputs(tmp_path):
    paths, _ = _subtomograms(tmp_path / "Subtomograms", 3)
    out = tmp_path / "d.h5"
    star, _ = _import_star(tmp_path, paths, names=["Subtomograms/particle_000.mrc",
                                                   "Subtomograms/gone_1.mrc",
                                                   "Subtomograms/gone_2.mrc"])
    with pytest.raises(TomosiftError, match=r"particles\.star: 2 of 3 images not found, first "
                                            r".*gone_1\.mrc"):
        import_particles(star, out, progress=False)
    assert not out.exists()

    mixed = tmp_path / "mixed"
    _subtomograms(mixed, 2)
    write_mrc(mixed / "particle_zzz.mrc", np.zeros((10, 10, 10), np.float32), IMPORT_VOXEL_NM)
    with pytest.raises(TomosiftError, match=r"particle_zzz\.mrc: box \(10, 10, 10\) differs"):
        import_particles(mixed, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".d.*"))

    other_voxel = tmp_path / "voxel"
    _subtomograms(other_voxel, 1)
    write_mrc(other_voxel / "particle_zzz.mrc", np.zeros((8, 8, 8), np.float32), 0.5)
    with pytest.raises(TomosiftError, match=r"particle_zzz\.mrc: voxel size 0.5 nm differs .* "
                                            r"0.92 nm"):
        import_particles(other_voxel, out, progress=False)

    table = particle_table("TS_01", np.zeros((1, 3)), (SIZE,) * 3, VOXEL_NM,
                           extra={"rlnImageName": [f"Subtomograms/{paths[0].name}"]})
    wrong_optics = tmp_path / "optics.star"
    write_particles_star(wrong_optics, table, 1.5, IMPORT_BOX)
    with pytest.raises(TomosiftError, match=r"0.92 nm in the MRC header, 1.5 nm in .*optics"):
        import_particles(wrong_optics, out, progress=False)

    stacks = tmp_path / "stacks.star"
    write_star(stacks, {"general": {"rlnTomoSubTomosAre2DStacks": 1},
                        "particles": pd.DataFrame({"rlnImageName": ["1@stack.mrcs"],
                                                   "rlnTomoName": ["TS_01"]})})
    with pytest.raises(TomosiftError, match=r"stacks\.star: .*2D stacks"):
        import_particles(stacks, out, progress=False)

    non_cubic = tmp_path / "flat"
    non_cubic.mkdir()
    write_mrc(non_cubic / "a.mrc", np.zeros((4, 8, 8), np.float32), IMPORT_VOXEL_NM)
    with pytest.raises(TomosiftError, match="cubic"):
        import_particles(non_cubic, out, progress=False)
    with pytest.raises(TomosiftError, match="no MRC subtomograms"):
        import_particles(_empty_folder(tmp_path), out, progress=False)
    assert not out.exists()


def _empty_folder(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    return folder


def test_cli_extract_and_import(tmp_path, tomo, capsys):
    truth = _write_picks(tmp_path / "truth.star", BLOBS, class_numbers=[1, 2, 1],
                         class_names=["alpha", "beta"])
    picks = _write_picks(tmp_path / "picks.star", np.vstack([BLOBS, EDGE_PICKS[:1]]))
    out = tmp_path / "d.h5"
    assert main(["extract", str(tomo), str(picks), "--box", str(BOX), "--voxel-size-nm", "0.92",
                 "--smooth-sigma-nm", "1", "--truth", str(truth), "--tilt-max-deg", "45",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 3 subtomograms") and "1 skipped" in line
    assert "0.92 nm (binning 2)" in line and "2 classes" in line
    with open_dataset(out) as h5:
        assert h5.attrs["tilt_max_deg"] == 45 and class_names_of(h5) == ["alpha", "beta"]

    _subtomograms(tmp_path / "classes" / "x", 2)
    _subtomograms(tmp_path / "classes" / "y", 2, seed=5)
    imported = tmp_path / "i.h5"
    assert main(["import-particles", str(tmp_path / "classes"), "--out", str(imported),
                 "--dtype", "float16", "--no-labels"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"{imported}: 4 subtomograms of 8³ voxels at 0.92 nm imported, labels unknown"
    assert main(["import-particles", str(tmp_path / "missing"), "--out", str(imported)]) == 2
    assert "tomosift: error: " in capsys.readouterr().err


def test_centred_coordinates_place_the_picks(tmp_path, tomo):
    table = particle_table("TS_01", BLOBS, (SIZE,) * 3, VOXEL_NM)
    centred = table.drop(columns=["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])
    picks = tmp_path / "centred.star"
    write_particles_star(picks, centred, VOXEL_NM, BOX)
    out = tmp_path / "d.h5"
    extract_subtomograms(tomo, picks, out, box_voxels=BOX, progress=False)
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["particles/coordinates_voxels"][()], BLOBS, atol=1e-4)
        np.testing.assert_array_equal(h5["volumes"][0], _tomogram()[22:38, 22:38, 22:38])


def test_import_keeps_centred_only_positions(tmp_path):
    paths, _ = _subtomograms(tmp_path / "Subtomograms", 2)
    star, xyz = _import_star(tmp_path, paths)
    particles = read_particles_star(star)[0].drop(
        columns=["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])
    centred_star = tmp_path / "centred.star"
    write_particles_star(centred_star, particles, IMPORT_VOXEL_NM, IMPORT_BOX)
    out = tmp_path / "d.h5"
    import_particles(centred_star, out, progress=False)
    with h5py.File(out) as h5:
        assert np.isnan(h5["particles/coordinates_voxels"][()]).all()
        np.testing.assert_allclose(h5["particles/centered_angst"][()],
                                   particles[list(CENTERED_COLUMNS)].to_numpy())
        np.testing.assert_allclose(h5["particles/centered_angst"][()],
                                   centered_angstrom(xyz, (SIZE,) * 3, VOXEL_NM))


def test_memory_map_gives_the_same_bytes_as_reading_whole(tmp_path, tomo):
    picks = _write_picks(tmp_path / "picks.star", BLOBS)
    mapped, whole = tmp_path / "mapped.h5", tmp_path / "whole.h5"
    extract_subtomograms(tomo, picks, mapped, box_voxels=BOX, voxel_size_nm=2 * VOXEL_NM,
                         progress=False)
    extract_subtomograms(tomo, picks, whole, box_voxels=BOX, voxel_size_nm=2 * VOXEL_NM,
                         progress=False, memory_map=False)
    with h5py.File(mapped) as a, h5py.File(whole) as b:
        assert a["volumes"].shape[0] == len(BLOBS)
        np.testing.assert_array_equal(a["volumes"][()], b["volumes"][()])


def test_memory_mapped_cubes_with_nan_are_refused(tmp_path):
    volume = _tomogram()
    x, y, z = (int(v) for v in BLOBS[0])
    volume[z, y, x] = np.nan
    path = tmp_path / "TS_01.mrc"
    write_mrc(path, volume, VOXEL_NM)
    picks = _write_picks(tmp_path / "picks.star", BLOBS[:1])
    with pytest.raises(TomosiftError, match=r"TS_01\.mrc: the map contains NaN"):
        extract_subtomograms(path, picks, tmp_path / "d.h5", box_voxels=BOX, progress=False)
    assert not (tmp_path / "d.h5").exists()
