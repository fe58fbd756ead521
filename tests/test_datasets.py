"""The HDF5 dataset contract: shards, joining, determinism, splits, bad input."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from tomosift.datasets import (
    EMPTY_CLASS,
    TRUTH_ARRAYS,
    DatasetPlan,
    dataset_summary,
    join_shards,
    open_dataset,
    read_truth,
    simulate_shard,
)
from tomosift.errors import TomosiftError
from tomosift.simulate.tomography import SimulationSettings

SETTINGS = SimulationSettings()
REQUIRED_ATTRS = ("voxel_size_nm", "box_voxels", "snr", "tilt_max_deg", "tilt_step_deg",
                  "voltage_kv", "cs_mm", "defocus_um", "amplitude_contrast", "reconstruction",
                  "seed", "tomosift_version", "noise_stage", "mtf_enabled", "ctf_enabled")


@pytest.fixture(scope="module")
def maps(small_maps):
    return [small_maps["3hhb"], small_maps["1bxn"]]


@pytest.fixture(scope="module")
def plan():
    return DatasetPlan(("3hhb", "1bxn"), per_class=6, snr=0.1, seed=3)


def make_shards(directory, maps, plan, shard_size):
    paths = []
    for start, stop in plan.shard_ranges(shard_size):
        path = directory / "shards" / f"shard-{start:05d}.h5"
        simulate_shard(maps, plan, SETTINGS, start, stop, path, progress=False)
        paths.append(path)
    return paths


def read_all(path):
    with open_dataset(path) as h5:
        arrays = {name: h5[name][()] for name in ("volumes", "labels", "split")}
        return arrays | {f"truth/{name}": value for name, value in read_truth(h5).items()}


def test_contract_and_attributes(tmp_path, maps, plan):
    path = tmp_path / "whole.h5"
    simulate_shard(maps, plan, SETTINGS, 0, plan.n_particles, path, progress=False)
    with h5py.File(path) as h5:
        assert h5["volumes"].shape == (18, 40, 40, 40)
        assert h5["volumes"].chunks == (1, 40, 40, 40)
        assert h5["volumes"].dtype == np.float32
        assert h5["truth/rotations"].shape == (18, 3, 3)
        assert h5["truth/shifts_voxels"].shape == (18, 3)
        names = [n.decode() if isinstance(n, bytes) else n for n in h5["class_names"][()]]
        assert names == ["3hhb", "1bxn", EMPTY_CLASS]
        assert list(h5["labels"][()]) == [0] * 6 + [1] * 6 + [2] * 6
        for attr in REQUIRED_ATTRS:
            assert attr in h5.attrs, attr
        assert h5.attrs["snr"] == 0.1 and h5.attrs["tilt_max_deg"] == 60
        rotations = h5["truth/rotations"][()]
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1),
                                   np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9)


def test_ground_truth_is_kept_apart_from_what_classifiers_read(tmp_path, maps, plan):
    # every per-particle value but the label and the split identifies the class on its own
    # (noise level, signal variance, ...): all of it lives in truth/, nothing beside volumes
    path = tmp_path / "whole.h5"
    simulate_shard(maps, plan, SETTINGS, 0, plan.n_particles, path, progress=False)
    with h5py.File(path) as h5:
        assert set(h5) == {"volumes", "labels", "split", "class_names", "truth"}
        assert set(TRUTH_ARRAYS) <= set(h5["truth"])
        snr = h5["truth/snr"][()]
        labels = h5["labels"][()]
    # the paper's model calibrates each particle's noise: measured SNR = the target
    np.testing.assert_allclose(snr[labels < 2], 0.1, rtol=0.35)
    folder = tmp_path / "joined"
    join_shards(make_shards(folder, maps, plan, 7), folder / "joined.h5")
    with h5py.File(folder / "joined.h5") as h5:
        assert set(h5) == {"volumes", "labels", "split", "class_names", "truth"}
        assert h5.attrs["measured_snr_mean"] == pytest.approx(snr[labels < 2].mean())


def test_a_missing_shard_is_refused_by_name(tmp_path, maps, plan):
    folder = tmp_path / "data"
    shards = make_shards(folder, maps, plan, 7)
    join_shards(shards, folder / "joined.h5")
    shards[1].unlink()
    # HDF5 alone would read the missing shard's volumes as zeros
    with pytest.raises(TomosiftError, match=rf"{shards[1].name}, which is missing"):
        open_dataset(folder / "joined.h5")
    copied = tmp_path / "copied.h5"  # the joined file copied without its shards/ folder
    copied.write_bytes((folder / "joined.h5").read_bytes())
    with pytest.raises(TomosiftError, match="missing"):
        open_dataset(copied)


def test_split_is_stratified_half_and_half(tmp_path, maps):
    plan = DatasetPlan(("3hhb", "1bxn"), per_class=10, snr=0.5, seed=4)
    path = tmp_path / "d.h5"
    simulate_shard(maps, plan, SETTINGS, 0, plan.n_particles, path, progress=False)
    data = read_all(path)
    split = data["split"].astype(str)
    for label in range(3):
        members = split[data["labels"] == label]
        assert (members == "test").sum() == 5 and (members == "train").sum() == 5
    # a different seed gives a different split
    assert not np.array_equal(plan.is_test(0), DatasetPlan(("a",), 10, 0.5, seed=5).is_test(0))


def test_shards_join_to_the_same_data_whatever_the_shard_size(tmp_path, maps, plan):
    whole = tmp_path / "whole.h5"
    simulate_shard(maps, plan, SETTINGS, 0, plan.n_particles, whole, progress=False)
    for shard_size in (5, 7):
        folder = tmp_path / f"size{shard_size}"
        join_shards(make_shards(folder, maps, plan, shard_size), folder / "joined.h5")
        joined, reference = read_all(folder / "joined.h5"), read_all(whole)
        for name in reference:
            np.testing.assert_array_equal(joined[name], reference[name], err_msg=name)
        with h5py.File(folder / "joined.h5") as h5:
            assert h5["volumes"].is_virtual


def test_same_config_same_bytes(tmp_path, maps, plan):
    digests = []
    for run in ("a", "b"):
        folder = tmp_path / run
        shards = make_shards(folder, maps, plan, 7)
        join_shards(shards, folder / "joined.h5")
        digests.append([p.read_bytes() for p in [*shards, folder / "joined.h5"]])
    assert digests[0] == digests[1]


def test_joined_file_reads_from_anywhere_and_moves(tmp_path, maps, plan, monkeypatch):
    folder = tmp_path / "data"
    join_shards(make_shards(folder, maps, plan, 9), folder / "joined.h5")
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    monkeypatch.chdir("/")
    data = read_all(moved / "joined.h5")
    assert data["volumes"].shape[0] == 18 and np.abs(data["volumes"]).sum() > 0
    summary = dataset_summary(moved / "joined.h5")
    assert "virtual" in summary and "1bxn" in summary and "9 train, 9 test" in summary


def test_float16_option(tmp_path, maps):
    plan = DatasetPlan(("3hhb",), per_class=2, snr=0.5, volume_dtype="float16")
    path = tmp_path / "half.h5"
    simulate_shard(maps[:1], plan, SETTINGS, 0, plan.n_particles, path, progress=False)
    with h5py.File(path) as h5:
        assert h5["volumes"].dtype == np.float16
        assert os.path.getsize(path) < 0.6 * 4 * 64000 * 4  # about half the float32 size


def test_join_rejects_gaps_and_mismatches(tmp_path, maps, plan):
    shards = make_shards(tmp_path, maps, plan, 6)
    with pytest.raises(TomosiftError, match="expected 6"):
        join_shards([shards[0], shards[2]], tmp_path / "gap.h5")
    other = DatasetPlan(("3hhb", "1bxn"), per_class=6, snr=0.5, seed=3)
    odd = tmp_path / "odd.h5"
    simulate_shard(maps, other, SETTINGS, 6, 12, odd, progress=False)
    with pytest.raises(TomosiftError, match="parameters differ"):
        join_shards([shards[0], odd, shards[2]], tmp_path / "mixed.h5")
    assert not (tmp_path / "gap.h5").exists() and not (tmp_path / "mixed.h5").exists()


def test_bad_input_writes_nothing(tmp_path, maps, plan):
    with pytest.raises(TomosiftError, match="at least one structure"):
        DatasetPlan((), per_class=4, snr=0.1)
    with pytest.raises(TomosiftError, match="SNR must be > 0"):
        DatasetPlan(("a",), per_class=4, snr=-1)
    out = tmp_path / "x.h5"
    with pytest.raises(TomosiftError, match="shape"):
        simulate_shard([np.zeros((32, 32, 32)), maps[1]], plan, SETTINGS, 0, 4, out)
    broken = maps[0].copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(TomosiftError, match="NaN"):
        simulate_shard([broken, maps[1]], plan, SETTINGS, 0, 4, out)
    with pytest.raises(TomosiftError, match="outside the dataset"):
        simulate_shard(maps, plan, SETTINGS, 10, 40, out)
    assert not list(tmp_path.iterdir())


def test_interrupted_shard_leaves_no_file(tmp_path, maps, plan, monkeypatch):
    from tomosift.simulate import tomography

    calls = {"n": 0}
    original = tomography.TiltSeriesGeometry.clean_signal

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the job were killed mid-way
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tomography.TiltSeriesGeometry, "clean_signal", failing)
    out = tmp_path / "shard.h5"
    out.write_bytes(b"previous good file")
    with pytest.raises(KeyboardInterrupt):
        simulate_shard(maps, plan, SETTINGS, 0, 6, out, progress=False)
    assert out.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.h5"]


def test_a_shard_job_logs_its_progress(tmp_path, maps, plan, capsys):
    # in a workflow job stderr is the log file, not a terminal: plain lines with rate and ETA
    simulate_shard(maps, plan, SETTINGS, 0, plan.n_particles, tmp_path / "s.h5")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("s.h5: 0/18 subtomo") and "started" in lines[0]
    assert lines[-1].startswith("s.h5: 18/18 subtomo (100%)") and "subtomo/s" in lines[-1]
