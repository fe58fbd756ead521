"""Several particle datasets (one per tomogram or particle file) as one dataset.

The subdivision gathers every input into one dataset so that features are computed in shards of
one index range and clustered together. As :func:`tomosift.datasets.join_shards` does for
simulated shards, the joined file maps ``volumes`` onto the inputs' volumes through an HDF5
virtual dataset (paths relative to the joined file: nothing large is copied) and copies the
small arrays: labels (renumbered into the union of the inputs' class names, in order of first
appearance; -1 stays unknown), splits and the ``particles/`` group (see
:mod:`tomosift.tomograms.records`). Inputs must agree on box, voxel size, polarity, tilt range,
volume type and the tomograms' voxel size. The joined file keeps only the attributes that
describe every input alike (:data:`JOINED_ATTRS`, when all inputs agree), not per-input ones
such as ``picks`` or ``n_skipped_edge``; ``source`` lists the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from tomosift.datasets import UntimedLayout, class_names_of, open_dataset
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.tomograms.records import PARTICLE_ARRAYS, ParticleRecords, write_particle_records

# Attributes every input must share (compared exactly).
SHARED_ATTRS = ("polarity", "tilt_max_deg")
# Attributes copied to the joined file when every input has the same value.
JOINED_ATTRS = ("voxel_size_nm", "box_voxels", "tilt_max_deg", "polarity", "volume_dtype",
                "tomogram_voxel_size_nm", "smooth_sigma_nm", "test_fraction", "seed",
                "tomosift_version", "ctf_corrected", "voltage_kv", "cs_mm", "amplitude_contrast",
                "tilt_series_pixel_size_a")
VOXEL_TOLERANCE = 1e-3


def _same_size(a: float, b: float) -> bool:
    if np.isnan(a) and np.isnan(b):
        return True
    return bool(abs(a - b) <= VOXEL_TOLERANCE * max(abs(a), abs(b)))


def _records(group: h5py.Group, n: int) -> dict[str, np.ndarray]:
    """The ``particles/`` arrays of an input (``centered_angst`` NaN when it has none)."""
    arrays = {}
    for key in PARTICLE_ARRAYS:
        if key not in group:
            if key != "centered_angst":
                raise TomosiftError(f"{group.file.filename}: particles/ has no {key}")
            arrays[key] = np.full((n, 3), np.nan)
            continue
        values = group[key][()]
        arrays[key] = values.astype(str) if values.dtype.kind in "OS" else values
    return arrays


def _joined_attrs(all_attrs: list[dict]) -> dict:
    """The :data:`JOINED_ATTRS` on which every input agrees (the first's value)."""
    kept = {}
    for key in JOINED_ATTRS:
        values = [attrs.get(key) for attrs in all_attrs]
        if values[0] is not None and all(str(v) == str(values[0]) for v in values):
            kept[key] = values[0]
    kept["voxel_size_nm"] = all_attrs[0]["voxel_size_nm"]  # checked to agree to 0.1 %
    return kept


def join_particle_datasets(paths: Sequence[str | os.PathLike],
                           out_path: str | os.PathLike) -> int:
    """Join particle datasets into ``out_path`` (atomically); returns the particle count."""
    out_path = Path(out_path)
    paths = [Path(p) for p in paths]
    if not paths:
        raise TomosiftError(f"{out_path}: no datasets to join")
    names: list[str] = []
    labels, splits, sources, all_attrs = [], [], [], []
    records: dict[str, list] = {k: [] for k in PARTICLE_ARRAYS}
    shape, dtype, tomogram_voxel = None, None, None
    weighted: list[bool] = []
    for path in paths:
        with open_dataset(path) as h5:
            volumes = h5["volumes"]
            attrs = dict(h5.attrs)
            if "particles" not in h5:
                raise TomosiftError(f"{path}: no particles/ group (not made by extract or "
                                    "import-particles)")
            group = h5["particles"]
            voxel = float(group.attrs.get("tomogram_voxel_size_nm", np.nan))
            if not all_attrs:
                shape, dtype, tomogram_voxel = volumes.shape[1:], volumes.dtype, voxel
            else:
                _check_matches(path, paths[0], attrs, all_attrs[0], volumes, shape, dtype,
                               voxel, tomogram_voxel)
            all_attrs.append(attrs)
            weighted.append("fourier_weights" in h5)
            if weighted[-1] != weighted[0]:
                with_weights, without = (path, paths[0]) if weighted[-1] else (paths[0], path)
                raise TomosiftError(f"{with_weights}: CTF-corrected particles with Fourier "
                                    f"weights cannot be joined with {without}, which has none")
            local = class_names_of(h5)
            for name in local:
                if name not in names:
                    names.append(name)
            remap = np.array([names.index(n) for n in local] + [-1], dtype=np.int64)
            labels.append(remap[h5["labels"][()].astype(np.int64)])  # -1 indexes the -1 entry
            splits.append(h5["split"][()])
            for key, values in _records(group, len(volumes)).items():
                records[key].append(values)
            sources.append((path, len(volumes)))
    total = sum(n for _, n in sources)
    layout = UntimedLayout(shape=(total, *shape), dtype=dtype)
    start = 0
    for path, n in sources:
        relative = os.path.relpath(path.resolve(), out_path.resolve().parent)
        layout[start : start + n] = h5py.VirtualSource(relative, "volumes", shape=(n, *shape))
        start += n
    joined = {key: np.concatenate(values) for key, values in records.items()}
    joined_records = ParticleRecords(
        tomo_name=joined["tomo_name"].tolist(), coordinates_voxels=joined["coordinates_voxels"],
        tomogram_size_xyz=joined["tomogram_size_xyz"], angles_deg=joined["angles_deg"],
        image_name=joined["image_name"].tolist(), tomogram_voxel_size_nm=tomogram_voxel,
        centered_angst=joined["centered_angst"])
    string = h5py.string_dtype("utf-8")
    all_labels = np.concatenate(labels)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.create_virtual_dataset("volumes", layout)
        if weighted[0]:  # CTF-corrected imports: their Fourier weights, mapped the same way
            weight_shape = (shape[0], shape[1], shape[2] // 2 + 1)
            weights = UntimedLayout(shape=(total, *weight_shape), dtype=np.float32)
            start = 0
            for path, n in sources:
                relative = os.path.relpath(path.resolve(), out_path.resolve().parent)
                weights[start: start + n] = h5py.VirtualSource(
                    relative, "fourier_weights", shape=(n, *weight_shape))
                start += n
            h5.create_virtual_dataset("fourier_weights", weights)
        h5.create_dataset("labels", data=all_labels.astype(np.int16), track_times=False)
        h5.create_dataset("class_names", shape=(len(names),), dtype=string, data=names or None,
                          track_times=False)
        h5.create_dataset("split", data=np.concatenate(splits), track_times=False)
        write_particle_records(h5.create_group("particles", track_order=True), joined_records)
        for key, value in _joined_attrs(all_attrs).items():
            h5.attrs[key] = value
        h5.attrs["source"] = [str(p) for p, _ in sources]
        h5.attrs["n_particles"] = total
        h5.attrs["labels_known"] = bool((all_labels >= 0).any())
    return total


def _check_matches(path: Path, first_path: Path, attrs: dict, first: dict, volumes,
                   shape, dtype, voxel: float, tomogram_voxel: float) -> None:
    """One-line error naming both files when an input differs from the first."""
    if volumes.shape[1:] != shape or volumes.dtype != dtype:
        raise TomosiftError(f"{path}: volumes {volumes.shape[1:]} {volumes.dtype} differ "
                            f"from {first_path}'s {shape} {dtype}")
    if not _same_size(float(attrs["voxel_size_nm"]), float(first["voxel_size_nm"])):
        raise TomosiftError(f"{path}: voxel size {float(attrs['voxel_size_nm']):g} nm "
                            f"differs from {first_path}'s {float(first['voxel_size_nm']):g} nm")
    for key in SHARED_ATTRS:
        if str(attrs.get(key)) != str(first.get(key)):
            raise TomosiftError(f"{path}: {key} {attrs.get(key)} differs from {first_path}'s "
                                f"{first.get(key)} (joined datasets must agree)")
    if not _same_size(voxel, tomogram_voxel):
        raise TomosiftError(f"{path}: tomogram voxel size {voxel:g} nm differs from "
                            f"{first_path}'s {tomogram_voxel:g} nm")
