"""tomosift subdivide: streamed CNN features, clusters and RELION subsets at scale."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pandas as pd
import pytest
import starfile

from tomosift.classify.modelfile import load_model, save_model
from tomosift.classify.train import train_cnn
from tomosift.cli import main
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.density import DensitySettings, make_density
from tomosift.discovery.cluster import agreement
from tomosift.discovery.features import cnn_features, read_features
from tomosift.errors import TomosiftError
from tomosift.io import read_mrc
from tomosift.recipe import TrainingSettings
from tomosift.subdivide import (
    check_model_matches,
    gather_and_cluster,
    shard_features,
    subdivide,
)
from tomosift.subdivide import shards as shards_module
from tomosift.subdivide.clusters import gather_features
from tomosift.tomograms.relion import read_particles_star

BOX = 24
VOXEL_NM = 0.92
NAMES = ("3hhb", "1bxn", "3gl1")
N = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, structure_path):
    """Three complexes at SNR 1000 in a 24³ box, 20 subtomograms each."""
    from tomosift.simulate.tomography import SimulationSettings

    grid = DensitySettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM)
    maps = [make_density(structure_path(name), grid)[0] for name in NAMES]
    plan = DatasetPlan(NAMES, per_class=20, snr=1000.0, empty_class=False, max_shift_voxels=1.0)
    path = tmp_path_factory.mktemp("data") / "clean.h5"
    simulate_shard(maps, plan, SimulationSettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM), 0,
                   plan.n_particles, path, progress=False)
    return path


@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    """A 1-epoch DSRF3D on 2x Fourier-binned input (binning and normalisation exercised)."""
    settings = TrainingSettings(architecture="dsrf3d", epochs=1, batch_size=8,
                                precision="float32", threads=2, seed=3, input_binning=2)
    path = tmp_path_factory.mktemp("model") / "dsrf3d.pt"
    train_cnn(dataset, replace(settings), path, progress=False)
    return path


@pytest.fixture(scope="module")
def with_positions(dataset, tmp_path_factory):
    """The dataset with a particles/ group: positions, tomogram sizes, angles and images."""
    path = tmp_path_factory.mktemp("positions") / "picked.h5"
    shutil.copy(dataset, path)
    rng = np.random.default_rng(7)
    coordinates = np.round(rng.uniform(20, 400, size=(N, 3)), 2)
    with h5py.File(path, "a") as h5:
        group = h5.create_group("particles")
        group.create_dataset("tomo_name", data=np.array(
            [f"TS_{i % 2 + 1:02d}" for i in range(N)], dtype="S8"))
        group.create_dataset("coordinates_voxels", data=coordinates)
        group.create_dataset("tomogram_size_xyz", data=np.tile([512, 512, 200], (N, 1)))
        group.create_dataset("angles_deg", data=rng.uniform(-180, 180, size=(N, 3)))
        group.create_dataset("image_name", data=np.array(
            [f"Subtomograms/p{i}.mrc" for i in range(N)], dtype="S32"))
        group.attrs["tomogram_voxel_size_nm"] = 1.35
    return path, coordinates


def _kw():
    return {"device": "cpu", "threads": 2, "progress": False}


def test_features_equal_in_memory_path_whatever_the_batching(dataset, model, tmp_path):
    reference = cnn_features(model, dataset, batch_size=64, **_kw())
    one = read_features(shard_features(model, dataset, tmp_path / "one.h5", batch_size=64,
                                       **_kw()))
    assert one.features.shape == (N, 3) and np.array_equal(one.indices, np.arange(N))
    np.testing.assert_allclose(one.features, reference.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one.max_softmax, reference.max_softmax, rtol=1e-4, atol=1e-6)
    assert np.array_equal(one.labels, reference.labels) and one.class_names == list(NAMES)
    assert one.attrs["model_sha256"] == shards_module.file_sha256(model)
    workers = read_features(shard_features(model, dataset, tmp_path / "w.h5", batch_size=7,
                                           workers=2, part_size=16, **_kw()))
    np.testing.assert_allclose(workers.features, one.features, rtol=1e-4, atol=1e-5)
    halves = [shard_features(model, dataset, tmp_path / f"s{s}.h5", shard=s, n_shards=2,
                             batch_size=64, **_kw()) for s in (1, 0)]
    assert read_features(halves[1]).attrs["index_stop"] == 30
    gathered = gather_features(halves, N)
    assert np.array_equal(gathered.indices, np.arange(N))
    np.testing.assert_allclose(gathered.features, one.features, rtol=1e-4, atol=1e-5)
    with pytest.raises(TomosiftError, match=r"s0\.h5.*do not cover the 60 particles"):
        gather_features([halves[1]], N)
    with pytest.raises(TomosiftError, match="30 repeated"):
        gather_features([halves[1], halves[1], halves[0]], N)


def test_resume_after_a_kill_gives_the_same_bytes(dataset, model, tmp_path, monkeypatch):
    fresh = shard_features(model, dataset, tmp_path / "fresh.h5", part_size=16, **_kw())
    real_write = shards_module._write_part
    calls = []

    def dies_after_first(*args):
        calls.append(args[0].name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_write(*args)

    monkeypatch.setattr(shards_module, "_write_part", dies_after_first)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        shard_features(model, dataset, out, part_size=16, **_kw())
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "resumed.h5.parts").glob("*.npz")) == [
        "part_00000.npz"]
    calls.clear()
    monkeypatch.setattr(shards_module, "_write_part",
                        lambda *a: (calls.append(a[0].name), real_write(*a)))
    shard_features(model, dataset, out, part_size=16, **_kw())
    assert calls == ["part_00001.npz", "part_00002.npz", "part_00003.npz"]
    assert out.read_bytes() == fresh.read_bytes()
    assert not (tmp_path / "resumed.h5.parts").exists()
    calls.clear()
    shard_features(model, dataset, out, part_size=16, **_kw())  # finished: reused as it is
    assert calls == []


def _star_by_index(path):
    particles, optics, _ = read_particles_star(path)
    return particles.set_index("tomosiftIndex"), optics


def test_clusters_and_star_subsets_with_positions(with_positions, model, tmp_path):
    data, coordinates = with_positions
    features = shard_features(model, data, tmp_path / "f.h5", **_kw())
    result = gather_and_cluster([features], data, tmp_path / "out", k=4, embedding_points=40,
                                progress=False)
    table = pd.read_csv(tmp_path / "out/clusters.tsv", sep="\t")
    assert list(table.columns) == ["index", "cluster", "distance", "class"]
    assert np.array_equal(np.sort(table["index"]), np.arange(N))
    assert set(table["cluster"]) <= {1, 2, 3, 4} and np.all(table["distance"] >= 0)
    sizes = np.bincount(table["cluster"], minlength=5)[1:]
    assert np.all(np.diff(sizes) <= 0) and np.array_equal(sizes, result.sizes)
    summary = pd.read_csv(tmp_path / "out/summary.tsv", sep="\t")
    assert list(summary["members"]) == list(sizes)
    assert {"majority_class", "majority_fraction", "mean_distance"} <= set(summary.columns)
    assert "coefficient of variation" in result.summary_lines[0]
    everything, optics = _star_by_index(tmp_path / "out/subsets/all.star")
    assert len(everything) == N and int(optics["rlnImageSize"].iloc[0]) == BOX
    by_index = table.set_index("index")
    for number in np.unique(table["cluster"]):
        path = tmp_path / f"out/subsets/cluster_{number:03d}.star"
        raw = starfile.read(path, always_dict=True)
        assert raw["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(VOXEL_NM * 10)
        assert int(raw["optics"]["rlnImageSize"].iloc[0]) == BOX
        particles, _ = _star_by_index(path)
        assert len(particles) == sizes[number - 1]
        assert np.all(particles["rlnClassNumber"] == number)
        assert np.all(by_index.loc[particles.index, "cluster"] == number)
        np.testing.assert_array_equal(
            particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
            coordinates[particles.index.to_numpy()])
        assert list(particles["rlnImageName"]) == [f"Subtomograms/p{i}.mrc"
                                                   for i in particles.index]
        assert list(particles["rlnTomoName"]) == [f"TS_{i % 2 + 1:02d}" for i in particles.index]
        centred = particles["rlnCenteredCoordinateZAngst"].to_numpy()
        np.testing.assert_allclose(centred, (coordinates[particles.index, 2] - 100) * 13.5)
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(everything.columns)
    assert (tmp_path / "out/cluster_sizes.png").stat().st_size > 0
    assert (tmp_path / "out/embedding.png").stat().st_size > 0


def test_same_seed_same_bytes_and_no_positions(dataset, model, tmp_path):
    features = shard_features(model, dataset, tmp_path / "f.h5", **_kw())
    runs = [gather_and_cluster([features], dataset, tmp_path / name, k=3, seed=5,
                               embedding_points=0, progress=False) for name in ("a", "b")]
    for name in ("clusters.tsv", "summary.tsv", "subsets/all.star",
                 *(f"subsets/cluster_{c:03d}.star" for c in np.unique(runs[0].clusters))):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    particles, optics, _ = read_particles_star(tmp_path / "a/subsets/all.star")
    assert "rlnCoordinateX" not in particles.columns
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(VOXEL_NM * 10)
    assert np.array_equal(particles["tomosiftIndex"], np.arange(N))
    assert np.array_equal(particles["rlnClassNumber"], runs[0].clusters)
    assert "no particles/ group" in runs[0].summary_lines[-1]
    scores = agreement(np.arange(N) // 20, runs[0].clusters)
    assert f"purity {scores['purity']:.3f}" in runs[0].summary_lines[1]
    assert scores["purity"] > 0.5  # chance: about 1/3 (a 1-epoch model)


def _forged(model, tmp_path, name, **changes):
    loaded = load_model(model)
    header = {k: v for k, v in loaded.items() if k not in ("tensors", "state_dict")}
    trained_on = {**header["trained_on"], **changes.pop("trained_on", {})}
    path = tmp_path / name
    save_model(path, {**header, **changes, "trained_on": trained_on}, loaded["tensors"])
    return path


def test_bad_inputs_are_one_line_errors(dataset, model, tmp_path):
    wrong_box = _forged(model, tmp_path, "box40.pt", box_voxels=40)
    with pytest.raises(TomosiftError, match=r"box40\.pt was trained on a box of 40 voxels, "
                                            r".*clean\.h5 has 24"):
        shard_features(wrong_box, dataset, tmp_path / "x.h5", **_kw())
    wrong_voxel = _forged(model, tmp_path, "voxel.pt", trained_on={"voxel_size_nm": 1.2})
    with pytest.raises(TomosiftError, match=r"voxel\.pt was trained on voxels of 1\.2 nm, "
                                            r".*clean\.h5 has 0\.92 nm"):
        shard_features(wrong_voxel, dataset, tmp_path / "x.h5", **_kw())
    close = _forged(model, tmp_path, "close.pt", trained_on={"voxel_size_nm": 0.925})
    check_model_matches(load_model(close), close, dataset, BOX, VOXEL_NM)  # within 1%
    with pytest.raises(TomosiftError, match="RIF-SVM"):
        check_model_matches({"method": "rif-svm"}, "svm.pt", dataset, BOX, VOXEL_NM)
    with pytest.raises(TomosiftError, match=r"clean\.h5: k = 61 clusters for 60 subtomograms"):
        subdivide(model, dataset, tmp_path / "big", k=61, **_kw())
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "big/features.h5").exists()


def test_cli_end_to_end_with_averages_and_rerun(dataset, model, tmp_path, capsys,
                                                monkeypatch):
    out = tmp_path / "sub"
    argv = ["subdivide", "--model", str(model), "--data", str(dataset), "--k", "3",
            "--out-dir", str(out), "--averages", "2", "--threads", "2", "--device", "cpu",
            "--batch-size", "16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "60 subtomograms in 3 clusters" in printed and f"outputs in {out}" in printed
    for number in (1, 2):
        volume, voxel = read_mrc(out / f"averages/cluster_{number:03d}.mrc")
        assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(VOXEL_NM, rel=1e-5)
        assert np.std(volume) > 0
    assert not (out / "averages/cluster_003.mrc").exists()
    assert (out / "averages.png").is_file() and (out / "features.h5").is_file()
    # gold-standard half-maps beside each average, and their resolution
    resolution = pd.read_csv(out / "averages/resolution.tsv", sep="\t")
    assert sorted(resolution["cluster"]) == [1, 2]
    for number in (1, 2):
        for half in (1, 2):
            assert read_mrc(out / f"averages/cluster_{number:03d}_half{half}.mrc")[0].std() > 0
    assert (resolution["resolution_0143_nm"] >= 2 * VOXEL_NM - 1e-6).all()
    before = {p: p.read_bytes() for p in (out / "clusters.tsv", out / "subsets/all.star")}

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed")

    import tomosift.subdivide.run as run_module

    monkeypatch.setattr(run_module, "cluster", no_recompute)
    assert main(argv) == 0  # a finished run is reused as it is
    assert all(p.read_bytes() == b for p, b in before.items())
    assert main([*argv[:-2], "--k", "0"]) == 2
    assert "k = 0 clusters" in capsys.readouterr().err


def test_streaming_kmeans_beyond_the_threshold(monkeypatch):
    from tomosift.subdivide import clusters as clusters_module

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], [300, 200, 100])  # sorted by class, as datasets are
    features = (centres[labels] + rng.normal(scale=0.5, size=(600, 2))).astype(np.float32)
    monkeypatch.setattr(clusters_module, "STREAMING_THRESHOLD", 100)
    monkeypatch.setattr(clusters_module, "STREAM_CHUNK", 64)
    numbers, distances = clusters_module.cluster(features, 3, seed=2)
    again, _ = clusters_module.cluster(features, 3, seed=2)
    assert np.array_equal(numbers, again)
    assert np.array_equal(np.bincount(numbers, minlength=4)[1:], [300, 200, 100])
    assert agreement(labels, numbers)["purity"] == 1.0 and distances.max() < 3


def _imported(tmp_path, n=4, star=False):
    """A dataset imported from a folder of MRC files or, with ``star``, from a particles STAR
    with only centred coordinates; returns (path, centred Å or None)."""
    from tomosift.io import write_mrc
    from tomosift.tomograms.imports import import_particles
    from tomosift.tomograms.relion import particle_table, write_particles_star

    rng = np.random.default_rng(2)
    folder = tmp_path / "Subtomograms"
    for i in range(n):
        write_mrc(folder / f"p{i}.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32), 0.92)
    out = tmp_path / "imported.h5"
    if not star:
        import_particles(folder, out, progress=False)
        return out, None
    xyz = rng.uniform(10, 90, size=(n, 3))
    table = particle_table("TS_01", xyz, (100, 100, 50), 1.35,
                           extra={"rlnImageName": [f"Subtomograms/p{i}.mrc" for i in range(n)]})
    table = table.drop(columns=["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])
    write_particles_star(tmp_path / "particles.star", table, 0.92, 8)
    import_particles(tmp_path / "particles.star", out, progress=False)
    return out, table[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                       "rlnCenteredCoordinateZAngst"]].to_numpy()


def _subsets(data, tmp_path, n=4):
    from tomosift.subdivide.outputs import particle_metadata, particles_table, write_subsets

    meta = particle_metadata(data)
    clusters = np.arange(n) % 2 + 1
    table = particles_table(np.arange(n), clusters, np.linspace(0, 1, n), meta, None)
    return meta, write_subsets(tmp_path / "subsets", table, 0.92, 8)


def test_folder_imports_write_subsets_without_missing_values(tmp_path):
    from tomosift.subdivide.outputs import subsets_note

    data, _ = _imported(tmp_path)
    meta, written = _subsets(data, tmp_path)
    for path in written:
        text = path.read_text()
        assert "<NA>" not in text and "nan" not in text.lower()
        particles, _, _ = read_particles_star(path)
        assert not {"rlnCoordinateX", "rlnCenteredCoordinateXAngst", "rlnTomoName",
                    "rlnTomoParticleName"} & set(particles.columns)
        assert np.all(particles["rlnOpticsGroup"] == 1)
        assert all(str(name).endswith(".mrc") for name in particles["rlnImageName"])
    assert "no positions" in subsets_note(meta)


def test_centred_only_positions_reach_the_subsets(tmp_path):
    from tomosift.subdivide.outputs import subsets_note

    data, centred = _imported(tmp_path, star=True)
    meta, written = _subsets(data, tmp_path)
    particles, _, _ = read_particles_star(written[0])
    assert "rlnCoordinateX" not in particles.columns and "<NA>" not in written[0].read_text()
    np.testing.assert_allclose(
        particles[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                   "rlnCenteredCoordinateZAngst"]].to_numpy(), centred, rtol=1e-6)
    assert list(particles["rlnTomoName"]) == ["TS_01"] * 4
    assert "positions, angles and images" in subsets_note(meta)


def test_batch_volumes_apply_the_sign_before_binning():
    from tomosift.classify.inputs import prepare_volumes
    from tomosift.subdivide.loader import BatchVolumes

    volumes = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype(np.float32) + 1
    flipped = BatchVolumes("unused.h5", [], "none", 2, sign=-1.0).prepare(volumes)
    assert flipped.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(flipped, -prepare_volumes(volumes, "none", 2), atol=1e-6)
    assert flipped.mean() == pytest.approx(-volumes.mean(), rel=1e-4)
    plain = BatchVolumes("unused.h5", [], "per_subtomogram", 1).prepare(volumes)
    np.testing.assert_allclose(plain.std(axis=(1, 2, 3)), 1, rtol=1e-5)


def test_census_counts_the_structures_of_a_subdivision(dataset, model, tmp_path, capsys,
                                                        structure_path):
    """Three complexes in 4 pure subsets (1bxn split in two): the census merges the two 1bxn
    subsets into one structure that holds nothing else, calls it novel when only the two
    others are references, and writes every output. The subsets are set by hand: a 1-epoch
    network's clusters are not pure. (3hhb and 3gl1, 60 and 38 kDa, are blobs of one size at
    24³ from 20 particles: their pair ratio, 0.76, is above what two independent 10-particle
    averages of either reach, 0.68-0.84, so the census may join them.)"""
    from tomosift.io import write_mrc

    references = tmp_path / "references"
    grid = DensitySettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM)
    for name in (NAMES[0], NAMES[2]):
        write_mrc(references / f"{name}.mrc", make_density(structure_path(name), grid)[0],
                  VOXEL_NM)
    out = tmp_path / "sub"
    assert main(["subdivide", "--model", str(model), "--data", str(dataset), "--k", "4",
                 "--out-dir", str(out), "--threads", "2", "--device", "cpu"]) == 0
    clusters = pd.read_csv(out / "clusters.tsv", sep="\t")
    split = {NAMES[0]: [1, 1], NAMES[1]: [2, 3], NAMES[2]: [4, 4]}
    clusters["cluster"] = [split[c][i % 2] for i, c in enumerate(clusters["class"])]
    clusters.to_csv(out / "clusters.tsv", sep="\t", index=False)
    argv = ["census", "--subdivision", str(out), "--out-dir", str(out / "census"),
            "--threads", "2", "--min-members", "6", "--references", str(references)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "census/census.tsv", sep="\t")
    members = pd.read_csv(out / "census/members.tsv", sep="\t")
    assert (f"{len(table)} structures (1 novel, 0 without resolved density) in 4 subsets"
            in printed), printed[-600:]
    assert table["resolved"].all()
    # 10-20 members per average: below the 25 the fixed default was validated on
    assert "threshold rule: calibrated: midway" in printed, printed[-600:]
    assert sorted(members["index"]) == list(range(N))
    assert "2,3" in set(table["subsets"].astype(str))  # 1bxn: one structure, alone
    for row in table.itertuples():
        classes = set(clusters.loc[clusters["cluster"].isin(
            [int(s) for s in str(row.subsets).split(",")]), "class"])
        assert (NAMES[1] in classes) == (len(classes) == 1 and row.novel)
        if not row.novel:
            assert row.nearest_reference in classes
        volume, voxel = read_mrc(out / f"census/structures/structure_{row.structure:03d}.mrc")
        assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(VOXEL_NM, rel=1e-5)
        star = starfile.read(out / f"census/structures/structure_{row.structure:03d}.star")
        assert len(star["particles"]) == row.particles
        assert (star["particles"]["rlnClassNumber"] == row.structure).all()
        indices = members.loc[members["structure"] == row.structure, "index"]
        assert sorted(star["particles"]["tomosiftIndex"]) == sorted(indices)
    for name in ("census.png", "similarity.png", "similarity.tsv", "census.json",
                 "unresolved.tsv", "structures_by_threshold.png"):
        assert (out / "census" / name).is_file()
    # every structure against every reference; census.tsv holds the best of each row
    scores = pd.read_csv(out / "census/reference_scores.tsv", sep="\t", index_col="structure")
    assert sorted(scores.columns) == sorted([NAMES[0], NAMES[2]])
    for row in table.itertuples():
        assert scores.loc[row.structure].idxmax() == row.nearest_reference
        assert scores.loc[row.structure].max() == pytest.approx(row.reference_score, abs=1e-3)
    # the count by threshold: 4 subsets at a threshold above every ratio, the census's count
    # at its own threshold
    steps = pd.read_csv(out / "census/structures_by_threshold.tsv", sep="\t")
    threshold = json.loads((out / "census/census.json").read_text())["threshold"]
    assert steps["structures"].iloc[0] == 4
    assert steps.loc[steps["threshold"] >= threshold - 1e-4, "structures"].iloc[-1] == len(table)
    assert "with the threshold 0.1 higher / lower" in printed
    # each pair held to its subsets' own levels: every subset large enough is split, the
    # scale is the normalised score, and 1bxn still joins no other complex
    assert main([*argv[:4], str(out / "census_per_subset"), *argv[5:],
                 "--calibration", "per_subset"]) == 0
    assert "(normalised score)" in capsys.readouterr().out
    made_from = json.loads((out / "census_per_subset/census.json").read_text())
    assert made_from["scale"] == "normalised score" and made_from["threshold"] == 0.5
    sizes = clusters["cluster"].value_counts()
    split = {int(s) for s in sizes.index if sizes[s] >= 12}  # 2 x --min-members
    assert made_from["settings"]["calibration"] == "per_subset"
    assert split and len(made_from["subset_levels"]) == 4
    assert len(made_from["calibration_ratios"]) == len(split)
    per_subset = pd.read_csv(out / "census_per_subset/census.tsv", sep="\t")
    for row in per_subset.itertuples():
        numbers = [int(s) for s in str(row.subsets).split(",")]
        classes = set(clusters.loc[clusters["cluster"].isin(numbers), "class"])
        assert NAMES[1] not in classes or classes == {NAMES[1]}
    # pooled, in the same folder (its averages and splits reused): the threshold is the 10%
    # quantile of the same splits' ratios, on the ratio scale
    assert main([*argv[:4], str(out / "census_per_subset"), *argv[5:],
                 "--calibration", "pooled"]) == 0
    pooled = json.loads((out / "census_per_subset/census.json").read_text())
    assert pooled["settings"]["calibration"] == "pooled"
    assert pooled["scale"] == "same-structure ratio"
    assert pooled["calibration_ratios"] == made_from["calibration_ratios"]
    assert pooled["threshold"] == pytest.approx(
        np.quantile(made_from["calibration_ratios"], 0.1), abs=1e-3)


def test_census_bad_inputs_are_one_line_errors(dataset, model, tmp_path, capsys):
    out = tmp_path / "sub"
    # subdivide --census: the subsets are written, then the census refuses in one line
    assert main(["subdivide", "--model", str(model), "--data", str(dataset), "--k", "3",
                 "--out-dir", str(out), "--threads", "2", "--device", "cpu", "--census",
                 "--min-members", "100"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after subdivide's progress
    assert "clusters.tsv: no subset has 100 members" in last
    assert (out / "clusters.tsv").is_file() and not (out / "census/census.tsv").exists()
    (tmp_path / "empty").mkdir()
    assert main(["census", "--subdivision", str(tmp_path / "empty"),
                 "--out-dir", str(tmp_path / "c1")]) == 2
    assert "no clusters.tsv" in capsys.readouterr().err
    assert main(["census", "--subdivision", str(out), "--out-dir", str(tmp_path / "c2"),
                 "--min-members", "100"]) == 2
    err = capsys.readouterr().err
    assert "no subset has 100 members" in err and len(err.strip().splitlines()) == 1
    from tomosift.io import write_mrc

    wrong = tmp_path / "wrong.mrc"
    write_mrc(wrong, np.zeros((BOX,) * 3, dtype=np.float32), 1.5)
    assert main(["census", "--subdivision", str(out), "--out-dir", str(tmp_path / "c3"),
                 "--min-members", "10", "--references", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "wrong.mrc" in err and "1.5 nm" in err and "0.92 nm" in err
    assert not (tmp_path / "c3" / "census.tsv").exists()
