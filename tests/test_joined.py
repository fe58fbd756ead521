"""Joining particle datasets: volumes mapped, labels renumbered, provenance kept."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tomosift.datasets import class_names_of, open_dataset
from tomosift.errors import TomosiftError
from tomosift.io import write_mrc
from tomosift.tomograms.imports import import_particles
from tomosift.tomograms.joined import join_particle_datasets


def class_folder(root, classes: dict[str, int], voxel_nm: float, rng, box: int = 8):
    """A folder of class folders of random MRC subtomograms; returns the volumes by class."""
    volumes = {}
    for name, count in classes.items():
        volumes[name] = [rng.standard_normal((box,) * 3).astype(np.float32) for _ in range(count)]
        for i, volume in enumerate(volumes[name]):
            write_mrc(root / name / f"p{i:02d}.mrc", volume, voxel_nm)
    return volumes


def test_join_maps_volumes_and_renumbers_labels(tmp_path, rng):
    first = class_folder(tmp_path / "a", {"alpha": 2, "beta": 3}, 0.92, rng)
    second = class_folder(tmp_path / "b", {"beta": 2, "gamma": 1}, 0.92, rng)
    import_particles(tmp_path / "a", tmp_path / "a.h5", progress=False)
    import_particles(tmp_path / "b", tmp_path / "b.h5", progress=False)
    total = join_particle_datasets([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "j.h5")
    assert total == 8
    with open_dataset(tmp_path / "j.h5") as h5:
        assert h5["volumes"].is_virtual
        assert class_names_of(h5) == ["alpha", "beta", "gamma"]
        names = [class_names_of(h5)[i] for i in h5["labels"][()]]
        assert names == ["alpha"] * 2 + ["beta"] * 3 + ["beta"] * 2 + ["gamma"]
        expected = [*first["alpha"], *first["beta"], *second["beta"], *second["gamma"]]
        np.testing.assert_array_equal(h5["volumes"][()], np.stack(expected))
        images = h5["particles/image_name"][()].astype(str)
        assert images[0].endswith("a/alpha/p00.mrc") and images[-1].endswith("b/gamma/p00.mrc")
        assert set(h5["split"][()].astype(str)) == {"train", "test"}


def test_join_refuses_other_voxel_sizes(tmp_path, rng):
    class_folder(tmp_path / "a", {"alpha": 2}, 0.92, rng)
    class_folder(tmp_path / "b", {"alpha": 2}, 1.2, rng)
    import_particles(tmp_path / "a", tmp_path / "a.h5", progress=False)
    import_particles(tmp_path / "b", tmp_path / "b.h5", progress=False)
    with pytest.raises(TomosiftError, match=r"b\.h5: voxel size 1\.2 nm differs"):
        join_particle_datasets([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "j.h5")
    assert not (tmp_path / "j.h5").exists()


def test_unknown_labels_stay_unknown(tmp_path, rng):
    class_folder(tmp_path / "a", {"alpha": 2}, 0.92, rng)
    import_particles(tmp_path / "a", tmp_path / "a.h5", progress=False)
    import_particles(tmp_path / "a", tmp_path / "u.h5", labels=False, progress=False)
    join_particle_datasets([tmp_path / "u.h5", tmp_path / "a.h5"], tmp_path / "j.h5")
    with h5py.File(tmp_path / "j.h5") as h5:
        assert list(h5["labels"][()]) == [-1, -1, 0, 0]
        assert bool(h5.attrs["labels_known"])


def test_join_keeps_shared_attributes_and_centred_positions(tmp_path, rng):
    from tomosift.tomograms.records import ParticleRecords, write_particle_dataset

    def dataset(name, n, picks, centred):
        records = ParticleRecords([name] * n, np.full((n, 3), 5.0), np.full((n, 3), 64),
                                  np.zeros((n, 3)), [""] * n, 0.5, centred)
        attrs = {"voxel_size_nm": 1.0, "box_voxels": 8, "tilt_max_deg": 60.0,
                 "polarity": "dark", "volume_dtype": "float32", "picks": picks,
                 "n_skipped_edge": n, "binning": 2.0, "source": f"{name}.mrc"}
        path = tmp_path / f"{name}.h5"
        volumes = (v for v in rng.standard_normal((n, 8, 8, 8)).astype(np.float32))
        write_particle_dataset(path, volumes, n, 8, np.full(n, -1), [], records,
                               np.full(n, b"test", dtype="S5"), attrs, progress=False)
        return path

    first = dataset("TS_01", 2, "a.star", np.arange(6.0).reshape(2, 3))
    second = dataset("TS_02", 1, "b.star", None)
    join_particle_datasets([first, second], tmp_path / "j.h5")
    with h5py.File(tmp_path / "j.h5") as h5:
        assert not {"picks", "n_skipped_edge", "binning"} & set(h5.attrs)
        assert list(h5.attrs["source"]) == [str(first), str(second)]
        assert h5.attrs["polarity"] == "dark" and h5.attrs["box_voxels"] == 8
        centred = h5["particles/centered_angst"][()]
        np.testing.assert_array_equal(centred[:2], np.arange(6.0).reshape(2, 3))
        assert np.isnan(centred[2]).all()
        assert list(h5["particles/tomo_name"][()].astype(str)) == ["TS_01", "TS_01", "TS_02"]
        assert h5["particles"].attrs["tomogram_voxel_size_nm"] == 0.5


def test_join_names_the_differing_attribute(tmp_path, rng):
    class_folder(tmp_path / "a", {"alpha": 2}, 0.92, rng)
    import_particles(tmp_path / "a", tmp_path / "w.h5", progress=False)
    import_particles(tmp_path / "a", tmp_path / "d.h5", polarity="dark", progress=False)
    with pytest.raises(TomosiftError, match=r"d\.h5: polarity dark differs from .*w\.h5's white"):
        join_particle_datasets([tmp_path / "w.h5", tmp_path / "d.h5"], tmp_path / "j.h5")


def test_join_maps_fourier_weights_and_refuses_to_mix(tmp_path, rng):
    from tomosift.discovery.particles import from_dataset
    from tomosift.tomograms.records import ParticleRecords, write_particle_dataset

    def dataset(name, n, weighted):
        records = ParticleRecords([name] * n, np.full((n, 3), 5.0), np.full((n, 3), 64),
                                  np.zeros((n, 3)), [""] * n, 0.5)
        attrs = {"voxel_size_nm": 1.0, "box_voxels": 8, "tilt_max_deg": 60.0,
                 "polarity": "white", "volume_dtype": "float32"}
        if weighted:
            attrs["ctf_corrected"] = True
        volumes = rng.standard_normal((n, 8, 8, 8)).astype(np.float32)
        weights = rng.uniform(0, 1, (n, 8, 8, 5)).astype(np.float32)
        items = iter(zip(volumes, weights, strict=True)) if weighted else iter(volumes)
        path = tmp_path / f"{name}.h5"
        write_particle_dataset(path, items, n, 8, np.full(n, -1), [], records,
                               np.full(n, b"test", dtype="S5"), attrs, progress=False,
                               fourier_weights=weighted)
        return path, weights

    (first, w1), (second, w2) = dataset("TS_01", 2, True), dataset("TS_02", 3, True)
    join_particle_datasets([first, second], tmp_path / "j.h5")
    particles = from_dataset(tmp_path / "j.h5", [4, 0])
    np.testing.assert_array_equal(particles.fourier_weights, np.stack([w2[2], w1[0]]))
    raw, _ = dataset("TS_03", 1, False)
    with pytest.raises(TomosiftError, match=r"TS_01\.h5: CTF-corrected .*TS_03\.h5"):
        join_particle_datasets([first, raw], tmp_path / "k.h5")
