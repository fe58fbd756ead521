"""``tomosift census --references training``: class averages stored in the model file at
training time (tomosift.classify.class_averages) and the census that compares with them."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tomosift.classify.class_averages import band_limited, class_averages, fourier_resize
from tomosift.classify.inputs import fourier_crop, read_split
from tomosift.classify.modelfile import load_model
from tomosift.classify.predict import restore_cnn
from tomosift.classify.train import train_cnn
from tomosift.cli import main
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.density import DensitySettings, make_density
from tomosift.errors import TomosiftError
from tomosift.recipe import TrainingSettings
from tomosift.subdivide.census import resolve_references, training_references

NAMES = ("1u6g", "4v1w")  # asymmetric: a wrong pose convention shows (correlation < 0.66)
PER_CLASS = 20


@pytest.fixture(scope="module")
def maps(structure_path):
    """40³ maps at 0.92 nm."""
    return [make_density(structure_path(name), DensitySettings())[0] for name in NAMES]


@pytest.fixture(scope="module")
def dataset(maps, tmp_path_factory):
    """Two complexes and the empty class at SNR 1000, 40³, shifts up to 4 voxels, ±60°."""
    from tomosift.simulate.tomography import SimulationSettings

    plan = DatasetPlan(NAMES, per_class=PER_CLASS, snr=1000.0)
    path = tmp_path_factory.mktemp("data") / "clean.h5"
    simulate_shard(maps, plan, SimulationSettings(), 0, plan.n_particles, path, progress=False)
    return path


@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    """A 1-epoch DSRF3D on 2x binned input, 4v1w left out of training."""
    settings = TrainingSettings(architecture="dsrf3d", epochs=1, batch_size=8,
                                precision="float32", threads=2, seed=3, input_binning=2,
                                exclude_classes=("4v1w",))
    path = tmp_path_factory.mktemp("model") / "dsrf3d.pt"
    train_cnn(dataset, replace(settings), path, progress=False)
    return path


@pytest.fixture(scope="module")
def subdivision(dataset, model, tmp_path_factory):
    """The dataset subdivided, then its subsets set by hand: one per complex (20 members),
    the empty particles in pairs (too small to average)."""
    out = tmp_path_factory.mktemp("sub") / "sub"
    assert main(["subdivide", "--model", str(model), "--data", str(dataset), "--k", "2",
                 "--out-dir", str(out), "--threads", "2", "--device", "cpu"]) == 0
    clusters = pd.read_csv(out / "clusters.tsv", sep="\t")
    empty = np.cumsum(clusters["class"] == "empty")
    clusters["cluster"] = [{NAMES[0]: 1, NAMES[1]: 2}.get(c, 3 + (e - 1) // 2)
                           for c, e in zip(clusters["class"], empty, strict=True)]
    clusters.to_csv(out / "clusters.tsv", sep="\t", index=False)
    return out


def _correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_fourier_padding_keeps_the_frequencies_and_the_centre(maps):
    limited = band_limited(fourier_crop(maps[0][None], 20)[0], 9)  # nothing on Nyquist
    padded = fourier_resize(limited, 40)
    assert padded.shape == (40,) * 3 and padded.mean() == pytest.approx(limited.mean(), rel=1e-4)
    np.testing.assert_allclose(fourier_resize(padded, 20), limited, atol=1e-5 * np.abs(
        limited).max())
    # the same as the 40³ map low-passed to those frequencies, voxel 20 on voxel 10
    assert _correlation(padded, band_limited(maps[0], 9)) > 0.999
    delta = np.zeros((20,) * 3, dtype=np.float32)
    delta[10, 10, 10] = 1.0
    assert np.unravel_index(np.argmax(fourier_resize(delta, 40)), (40,) * 3) == (20, 20, 20)


def test_training_stores_one_average_per_class_from_the_true_poses(model, dataset, maps):
    """The averages (10 train particles each, un-posed) match the true densities; the
    network's weights load as before."""
    stored = load_model(model)
    averages, record = stored["tensors"]["class_averages"].numpy(), stored["class_averages"]
    assert stored["class_names"] == ["1u6g", "empty"]  # 4v1w left out
    assert averages.shape == (2, 20, 20, 20) and averages.dtype == np.float32
    assert record["box"] == 20 and record["voxel_size_nm"] == pytest.approx(0.92 * 2)
    assert record["members"] == [PER_CLASS // 2, 0] and not averages[1].any()
    truth = [band_limited(fourier_crop(m[None], 20)[0], 10) for m in maps]
    assert _correlation(averages[0], truth[0]) > 0.9  # measured 0.94 (a wrong pose: <= 0.66)
    assert _correlation(averages[0], truth[1]) < 0.5
    assert "class_averages" not in stored["state_dict"]
    restore_cnn(stored)  # the weights alone, strictly
    # all classes, at most 5 members each: the 4v1w average matches 4v1w
    split = read_split(dataset, "train")
    both, record = class_averages(dataset, split.indices, split.labels, split.class_names,
                                  members=5)
    assert record["members"] == [5, 5, 0]
    assert _correlation(both[1], truth[1]) > 0.8 > _correlation(both[1], truth[0])


def test_data_without_poses_and_old_models_have_no_averages(dataset, model, subdivision,
                                                            tmp_path, capsys):
    bare = tmp_path / "bare.h5"
    bare.write_bytes(dataset.read_bytes())
    with h5py.File(bare, "a") as h5:
        del h5["truth"]
    split = read_split(bare, "train")
    assert class_averages(bare, split.indices, split.labels, split.class_names) is None
    # a model file written before class averages: loads and predicts, census refuses in a line
    payload = torch.load(model, weights_only=True)
    payload["tensors"].pop("class_averages")
    header = json.loads(payload["header"])
    header.pop("class_averages")
    payload["header"] = json.dumps(header)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert "class_averages" not in load_model(old)["tensors"]
    restore_cnn(load_model(old))
    with pytest.raises(TomosiftError, match=r"old\.pt: the model file holds no class averages"):
        training_references(old, 0.92, 40)
    assert main(["census", "--subdivision", str(subdivision), "--out-dir",
                 str(tmp_path / "c"), "--references", "training", "--model", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "old.pt: the model file holds no class averages" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "c" / "census.tsv").exists()
    # a subdivision whose feature files are gone: the model must be given
    bare_sub = tmp_path / "bare_sub"
    bare_sub.mkdir()
    for name in ("clusters.tsv", "subdivide.json"):
        (bare_sub / name).write_bytes((subdivision / name).read_bytes())
    assert main(["census", "--subdivision", str(bare_sub), "--out-dir", str(tmp_path / "d"),
                 "--references", "training"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no feature file records it; give it with --model" in err
    assert len(err.splitlines()) == 1


def test_census_with_the_training_references(subdivision, model):
    """The subdivision's model found from its features; 1u6g (trained on) is known with a
    full score (its resolved shells counted up to the 20³ average's band limit, shell 10),
    4v1w (left out of training) is novel."""
    out = subdivision / "census"
    assert main(["census", "--subdivision", str(subdivision), "--out-dir", str(out),
                 "--threads", "2", "--min-members", "6", "--calibration-subsets", "1",
                 "--references", "training"]) == 0
    table = pd.read_csv(out / "census.tsv", sep="\t")
    members = pd.read_csv(out / "members.tsv", sep="\t")
    clusters = pd.read_csv(subdivision / "clusters.tsv", sep="\t")
    assert len(table) == 2
    for row in table.itertuples():
        subsets = [int(s) for s in str(row.subsets).split(",")]
        classes = set(clusters.loc[clusters["cluster"].isin(subsets), "class"])
        if classes == {"1u6g"}:
            assert not row.novel and row.nearest_reference == "1u6g"
            assert row.reference_score >= 0.9, row
        else:
            assert classes == {"4v1w"} and row.novel
    assert (members["structure"] > 0).sum() == 2 * PER_CLASS
    made_from = json.loads((out / "census.json").read_text())
    assert made_from["class_average_references"] == {"models": [str(model)],
                                                     "band_limits": {"1u6g": 10}}
    # the workflow names the model file itself as the reference
    given = resolve_references([str(model)], 0.92, 40, subdivision)
    assert list(given.maps) == ["1u6g"] and given.band_limits == {"1u6g": 10}
    assert given.maps["1u6g"].shape == (40,) * 3
