"""Particle datasets: the HDF5 file that extraction and import write, with its ``particles/``
group (where each subtomogram came from; see :mod:`tomosift.datasets`).

The writer streams: one subtomogram at a time is written into a pre-sized chunked ``volumes``
dataset, so memory holds one box, never the whole dataset. Labelled particles get a
stratified seeded train/test split, so that a classifier can train on labelled real
subtomograms (paper Section 3.2.2); unknown labels (-1) are all ``test``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tomosift import __version__
from tomosift.datasets import test_flags
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.progress import progress_bar
from tomosift.tomograms.relion import ANGLE_COLUMNS

PARTICLES_GROUP = "particles"
VOLUME_DTYPES = ("float32", "float16")
POLARITIES = ("dark", "white")
PARTICLE_ARRAYS = ("tomo_name", "coordinates_voxels", "tomogram_size_xyz", "angles_deg",
                   "image_name", "centered_angst")  # the particles/ group, in file order


@dataclass
class ParticleRecords:
    """The ``particles/`` group of a dataset: where each of the N subtomograms came from.

    Attributes:
        tomo_name: (N,) tomogram names ('' when unknown).
        coordinates_voxels: (N, 3) x, y, z in voxels of the source tomogram (NaN: unknown).
        tomogram_size_xyz: (N, 3) the source tomogram's size in voxels (0: unknown).
        angles_deg: (N, 3) RELION rot, tilt, psi in degrees (NaN: unknown).
        image_name: (N,) the source MRC of imported subtomograms ('' for extracted ones).
        tomogram_voxel_size_nm: the tomograms' voxel edge (NaN: unknown).
        centered_angst: (N, 3) RELION 5 centred x, y, z in Å from the tomogram's centre
            (NaN: unknown; None: all unknown).
    """

    tomo_name: list[str]
    coordinates_voxels: np.ndarray
    tomogram_size_xyz: np.ndarray
    angles_deg: np.ndarray
    image_name: list[str]
    tomogram_voxel_size_nm: float = float("nan")
    centered_angst: np.ndarray | None = None

    @classmethod
    def unknown(cls, n: int, image_name: Sequence[str]) -> ParticleRecords:
        return cls([""] * n, np.full((n, 3), np.nan), np.zeros((n, 3), dtype=np.int64),
                   np.full((n, 3), np.nan), [str(s) for s in image_name])

    def arrays(self) -> dict[str, np.ndarray | list[str]]:
        """The ``particles/`` datasets by name (:data:`PARTICLE_ARRAYS`), shapes checked."""
        n = len(self.tomo_name)
        centred = (np.full((n, 3), np.nan) if self.centered_angst is None
                   else self.centered_angst)
        return {"tomo_name": [str(t) for t in self.tomo_name],
                "coordinates_voxels": np.asarray(self.coordinates_voxels, np.float64).reshape(n, 3),
                "tomogram_size_xyz": np.asarray(self.tomogram_size_xyz, np.int64).reshape(n, 3),
                "angles_deg": np.asarray(self.angles_deg, np.float64).reshape(n, 3),
                "image_name": [str(i) for i in self.image_name],
                "centered_angst": np.asarray(centred, np.float64).reshape(n, 3)}


# -- labels and split -------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """(N,) ``train``/``test`` as S5: per class, ``round(count * test_fraction)`` seeded picks
    are ``test`` (:func:`tomosift.datasets.test_flags`, as simulated datasets choose them);
    unknown labels (-1) are all ``test``."""
    labels = np.asarray(labels, dtype=np.int64)
    split = np.full(len(labels), b"test", dtype="S5")
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        flags = test_flags(len(members), test_fraction, seed, int(label))
        split[members[~flags]] = b"train"
    return split


# -- the dataset writer -----------------------------------------------------------------------

def write_particle_dataset(out_path, volumes: Iterator[np.ndarray], n: int, box_voxels: int,
                           labels: np.ndarray, class_names: Sequence[str],
                           records: ParticleRecords, split: np.ndarray, attrs: dict,
                           dtype: str = "float32", progress: bool = True,
                           fourier_weights: bool = False,
                           particle_extras: dict[str, np.ndarray] | None = None) -> None:
    """Stream ``n`` (box, box, box) volumes into a dataset file, atomically and reproducibly.

    ``volumes`` may raise :class:`TomosiftError` at any point: nothing is then left behind.
    With ``fourier_weights`` it yields (volume, weights) pairs instead, the weights
    (box, box, box // 2 + 1) written to the top-level ``fourier_weights`` dataset (one particle
    per chunk). ``particle_extras``: further (n,) arrays of the ``particles/`` group (e.g.
    ``defocus_um``).
    """
    out_path = Path(out_path)
    string = h5py.string_dtype("utf-8")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        dataset = h5.create_dataset("volumes", shape=(n, box_voxels, box_voxels, box_voxels),
                                    dtype=np.dtype(dtype), chunks=(1, *(box_voxels,) * 3),
                                    track_times=False)
        weights = None
        if fourier_weights:
            shape = (box_voxels, box_voxels, box_voxels // 2 + 1)
            weights = h5.create_dataset("fourier_weights", shape=(n, *shape), dtype=np.float32,
                                        chunks=(1, *shape), track_times=False)
        bar = progress_bar(total=n, desc=out_path.name, unit="subtomo", enabled=progress)
        written = 0
        with bar:
            for item in volumes:
                volume = item
                if weights is not None:
                    volume, weight = item
                    weights[written] = np.asarray(weight, dtype=np.float32)
                dataset[written] = volume.astype(dtype)
                written += 1
                bar.update(1)
        if written != n:
            raise TomosiftError(f"{out_path}: {written} volumes written, {n} expected")
        h5.create_dataset("labels", data=np.asarray(labels, dtype=np.int16), track_times=False)
        h5.create_dataset("class_names", shape=(len(class_names),), dtype=string,
                          data=list(class_names) or None, track_times=False)
        h5.create_dataset("split", data=np.asarray(split, dtype="S5"), track_times=False)
        group = h5.create_group(PARTICLES_GROUP, track_order=True)
        write_particle_records(group, records)
        for name, values in (particle_extras or {}).items():
            group.create_dataset(name, data=np.asarray(values), track_times=False)
        for key, value in {"tomosift_version": __version__, **attrs}.items():
            h5.attrs[key] = value


def write_particle_records(group: h5py.Group, records: ParticleRecords) -> None:
    """Write the ``particles/`` datasets (:data:`PARTICLE_ARRAYS`) and the attribute
    ``tomogram_voxel_size_nm`` of ``records`` into an open (empty) group."""
    string = h5py.string_dtype("utf-8")
    for name, values in records.arrays().items():
        if isinstance(values, list):
            group.create_dataset(name, shape=(len(values),), dtype=string, data=values or None,
                                 track_times=False)
        else:
            group.create_dataset(name, data=values, track_times=False)
    group.attrs["tomogram_voxel_size_nm"] = float(records.tomogram_voxel_size_nm)


def common_attrs(source, tilt_max_deg: float, polarity: str, labels_known: bool,
                 test_fraction: float, seed: int, dtype: str) -> dict:
    """The file attributes every particle dataset records."""
    return {"source": str(source), "tilt_max_deg": float(tilt_max_deg), "polarity": polarity,
            "labels_known": bool(labels_known), "test_fraction": float(test_fraction),
            "seed": int(seed), "volume_dtype": dtype}


def check_options(tilt_max_deg: float, polarity: str, test_fraction: float,
                  dtype: str) -> None:
    """Refuse, in one line, options no particle dataset can hold."""
    if polarity not in POLARITIES:
        raise TomosiftError(f"polarity must be dark or white, not '{polarity}'")
    if dtype not in VOLUME_DTYPES:
        raise TomosiftError(f"dtype must be float32 or float16, not '{dtype}'")
    if not 0 <= test_fraction <= 1:
        raise TomosiftError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if not 0 < tilt_max_deg <= 90:
        raise TomosiftError(f"tilt_max_deg must lie in (0, 90], got {tilt_max_deg}")


def particle_angles(particles: pd.DataFrame) -> np.ndarray:
    """(N, 3) rot, tilt, psi (degrees) of a particles table; NaN where it has none."""
    if all(c in particles.columns for c in ANGLE_COLUMNS):
        return particles[list(ANGLE_COLUMNS)].to_numpy(dtype=np.float64)
    return np.full((len(particles), 3), np.nan)


def tomo_names(particles: pd.DataFrame) -> list[str]:
    """(N,) ``rlnTomoName`` of a particles table ('' where unknown)."""
    if "rlnTomoName" in particles.columns:  # an empty name may read back as NaN
        return ["" if pd.isna(name) else str(name) for name in particles["rlnTomoName"]]
    return [""] * len(particles)
