"""One command from a tomogram and a model to subsets: picking, extraction at the model's
box and voxel size, polarity handled, bad input refused with one line."""

from __future__ import annotations

import os
from dataclasses import replace

import mrcfile
import numpy as np
import pytest

from tomosift.classify.train import train_cnn
from tomosift.cli import main
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.density import DensitySettings, make_density
from tomosift.discovery.features import read_features
from tomosift.io import read_mrc, write_mrc
from tomosift.recipe import TrainingSettings
from tomosift.simulate.cell import TomogramPlan, simulate_tomogram, write_tomogram
from tomosift.simulate.tomography import SimulationSettings
from tomosift.tomograms.pick import match_picks
from tomosift.tomograms.relion import coordinates_of, read_particles_star

BOX = 24
VOXEL_NM = 0.92
NAMES = ("3gl1", "1bxn")


@pytest.fixture(scope="module")
def maps(structure_path):
    grid = DensitySettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM)
    return {name: make_density(structure_path(name), grid)[0] for name in NAMES}


@pytest.fixture(scope="module")
def model(maps, tmp_path_factory):
    """A 1-epoch DSRF3D trained on dark (recorded) subtomograms of the two classes."""
    folder = tmp_path_factory.mktemp("model")
    plan = DatasetPlan(NAMES, per_class=12, snr=10.0, empty_class=False)
    settings = SimulationSettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM, tilt_step_deg=4.0)
    simulate_shard(list(maps.values()), plan, settings, 0, plan.n_particles,
                   folder / "train.h5", progress=False)
    training = TrainingSettings(architecture="dsrf3d", epochs=1, batch_size=8,
                                precision="float32", threads=2, seed=3, input_binning=2)
    train_cnn(folder / "train.h5", replace(training), folder / "model.pt", progress=False)
    return folder / "model.pt"


@pytest.fixture(scope="module")
def tomogram(maps, tmp_path_factory):
    """A 96³ tomogram of 10 particles at a high dose (particles dark) and its truth."""
    folder = tmp_path_factory.mktemp("tomogram")
    settings = SimulationSettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM, tilt_step_deg=4.0)
    simulated = simulate_tomogram(maps, settings, TomogramPlan(
        size_voxels=96, n_particles=10, dose_e_per_a2=2000.0, seed=5), progress=False)
    write_tomogram(simulated, folder / "TS_01.mrc", folder / "truth.star", "TS_01", BOX)
    return folder / "TS_01.mrc", folder / "truth.star"


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_a_tomogram_becomes_subsets(model, tomogram, tmp_path, capsys):
    path, truth = tomogram
    out = tmp_path / "out"
    assert run("subdivide", "--model", model, "--tomogram", path, "--k", 2, "--out-dir",
               out) == 0
    picks, _, _ = read_particles_star(out / "picks.star")
    truth_table, _, _ = read_particles_star(truth)
    matched = match_picks(coordinates_of(picks, out / "picks.star"),
                          coordinates_of(truth_table, truth), tolerance_voxels=2.0)
    assert (matched >= 0).sum() >= 5  # the picker finds the particles it cut out
    subsets = sorted((out / "subsets").glob("cluster_*.star"))
    assert subsets
    rows = sum(len(read_particles_star(p)[0]) for p in subsets)
    features = read_features(out / "features.h5")
    assert rows == len(features.indices) and features.attrs["input_sign"] == 1.0
    before = (out / "particles.h5").stat().st_mtime_ns
    assert run("subdivide", "--model", model, "--tomogram", path, "--k", 2, "--out-dir",
               out) == 0
    assert (out / "particles.h5").stat().st_mtime_ns == before  # same settings: reused
    assert "clusters" in capsys.readouterr().out


def test_white_particles_are_flipped_to_the_model_s_polarity(model, tomogram, tmp_path):
    path, _ = tomogram
    volume, voxel = read_mrc(path)
    write_mrc(tmp_path / "white.mrc", -volume, voxel)
    run("subdivide", "--model", model, "--tomogram", path, "--k", 2, "--out-dir",
        tmp_path / "dark")
    assert run("subdivide", "--model", model, "--tomogram", tmp_path / "white.mrc",
               "--polarity", "white", "--k", 2, "--out-dir", tmp_path / "light") == 0
    dark = read_features(tmp_path / "dark/features.h5")
    light = read_features(tmp_path / "light/features.h5")
    assert light.attrs["input_sign"] == -1.0
    np.testing.assert_allclose(light.features, dark.features, rtol=1e-4, atol=1e-4)


def test_bad_tomograms_are_refused_with_one_line(model, tomogram, tmp_path, capsys):
    path, _ = tomogram
    volume, _ = read_mrc(path)
    with mrcfile.new(tmp_path / "novoxel.mrc") as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = 0.0
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    write_mrc(tmp_path / "fine.mrc", volume, 0.7)  # 0.7 nm bins to 0.933 nm in 24 voxels
    (tmp_path / "empty.star").write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n")
    cases = [
        (("--tomogram", tmp_path / "novoxel.mrc"), "novoxel.mrc: the header's voxel size"),
        (("--tomogram", truncated), "truncated.mrc: not a readable MRC"),
        (("--tomogram", tmp_path / "fine.mrc"), "fine.mrc: voxels of 0.7 nm bin to 0.933"),
        (("--tomogram", path, "--picks", tmp_path / "empty.star"), "empty.star: no particles"),
        (("--tomogram", path, "--k", 500), "k = 500 clusters for"),
    ]
    for extra, expected in cases:
        out = tmp_path / f"out{len(expected)}"
        arguments = ["subdivide", "--model", model, "--out-dir", out, *extra]
        if "--k" not in extra:
            arguments += ["--k", 2]
        assert run(*arguments) == 2, expected
        error = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("tomosift: error")]  # other lines: progress
        assert len(error) == 1 and expected in error[0], error
        assert not (out / "subsets").exists()


def test_particle_files_with_problems_are_refused(model, tmp_path, capsys):
    write_mrc(tmp_path / "p1.mrc", np.zeros((BOX,) * 3, np.float32), VOXEL_NM)
    (tmp_path / "particles.star").write_text(
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnCoordinateX #2\n"
        "p1.mrc 10\np2.mrc 20\n")
    (tmp_path / "nocoords.star").write_text("data_particles\n\nloop_\n_rlnTomoName #1\np1\n")
    cases = [
        (("--data", tmp_path / "particles.star"), "particles.star: 1 of 2 images"),
        (("--tomogram", tmp_path / "p1.mrc", "--picks", tmp_path / "nocoords.star"),
         "nocoords.star: no coordinates"),
    ]
    for extra, expected in cases:
        out = tmp_path / f"out{len(expected)}"
        assert run("subdivide", "--model", model, "--k", 2, "--out-dir", out, *extra) == 2
        error = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("tomosift: error")]
        assert len(error) == 1 and expected in error[0], error
        assert not (out / "particles.h5").exists()
