"""Subtomogram datasets from tomograms and from RELION: ``tomosift extract`` and
``tomosift import-particles``.

Both write the HDF5 dataset that training and discovery read (see :mod:`tomosift.datasets`)
plus the optional ``particles/`` group: where each subtomogram came from (tomogram name,
position, Euler angles, source image). They stream: one subtomogram at a time is cut (or read)
and written into a pre-sized chunked ``volumes`` dataset, so memory holds one tomogram and one
box, never the whole dataset.

Extraction (:func:`extract_subtomograms`): around each pick, a cube of ``B0`` voxels of the
tomogram is cut and Fourier-cropped to the output box. Without a target voxel size ``B0`` is
the box; with one, ``B0`` is the even integer nearest ``box * target / v0`` (``v0``: the
tomogram's voxel size) and the voxel size recorded is the actual ``v0 * B0 / box``. Positions
are rounded to the nearest tomogram voxel (the cube's centre voxel ``B0 // 2`` is the pick's
voxel, as RELION extracts): no interpolation and no periodic shift of the box contents; the
residual offset is at most half a tomogram voxel. Optional Gaussian smoothing (the paper's
σ = 1 nm) is applied in Fourier space at the output voxel size. Cubes that leave the tomogram
are skipped and counted.

Labels: from a truth STAR (picks matched to true particles within a tolerance; unmatched picks
form the class ``false_pick``), else from the picks' ``rlnClassNumber``, else unknown
(``labels`` = -1, no class names, every particle in the ``test`` split). Known labels get a
stratified seeded train/test split, so that a classifier can train on labelled real
subtomograms (paper Section 3.2.2).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tomosift import __version__
from tomosift.datasets import test_flags
from tomosift.discovery.particles import VOXEL_TOLERANCE, iter_mrc_subtomograms, same_voxel
from tomosift.errors import TomosiftError
from tomosift.io import ANGSTROM_PER_NM, atomic_path, read_mrc
from tomosift.progress import progress_bar
from tomosift.relion import (
    ANGLE_COLUMNS,
    CENTERED_COLUMNS,
    COORDINATE_COLUMNS,
    centered_angstrom,
    class_labels,
    coordinates_of,
    read_particles_star,
)

PARTICLES_GROUP = "particles"
FALSE_PICK_CLASS = "false_pick"
VOLUME_DTYPES = ("float32", "float16")
POLARITIES = ("dark", "white")
MRC_SUFFIXES = (".mrc", ".map", ".rec")
PARTICLE_ARRAYS = ("tomo_name", "coordinates_voxels", "tomogram_size_xyz", "angles_deg",
                   "image_name", "centered_angst")  # the particles/ group, in file order


@dataclass(frozen=True)
class ExtractionSummary:
    """What :func:`extract_subtomograms` wrote."""

    n_extracted: int
    n_skipped_edge: int
    voxel_size_nm: float
    binning: float
    labels_known: bool
    box_voxels: int = 0
    n_classes: int = 0


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_particles` wrote."""

    n_imported: int
    box_voxels: int
    voxel_size_nm: float
    labels_known: bool
    n_classes: int = 0


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


# -- volumes ------------------------------------------------------------------------------------

def source_box(box_voxels: int, voxel_size_nm: float | None,
               tomogram_voxel_size_nm: float, tomogram_path=None) -> int:
    """The edge B0 of the tomogram cube cut for an output box: the even integer nearest
    ``box * target / v0`` (``box`` without a target). Refuses upsampling (the error names
    ``tomogram_path``)."""
    if voxel_size_nm is None:
        return box_voxels
    if not np.isfinite(voxel_size_nm) or voxel_size_nm <= 0:
        raise TomosiftError(f"--voxel-size-nm must be > 0, got {voxel_size_nm}")
    if voxel_size_nm < tomogram_voxel_size_nm * (1 - VOXEL_TOLERANCE):
        where = "the tomogram" if tomogram_path is None else str(tomogram_path)
        raise TomosiftError(
            f"{where}: target voxel size {voxel_size_nm:g} nm is smaller than the tomogram's "
            f"{tomogram_voxel_size_nm:g} nm (extraction bins, it does not upsample)")
    return max(box_voxels, 2 * round(box_voxels * voxel_size_nm / tomogram_voxel_size_nm / 2))


def resample_cube(cube: np.ndarray, box_voxels: int,
                  smooth_sigma_voxels: float | None = None) -> np.ndarray:
    """An (n, n, n) tomogram cube Fourier-cropped to (m, m, m) float32, m = ``box_voxels``
    (:func:`tomosift.classify.inputs.fourier_crop`: the pick's voxel n // 2 lands on m // 2),
    optionally smoothed by a Gaussian of ``smooth_sigma_voxels`` output voxels
    (:func:`gaussian_transfer`). Without cropping or smoothing the cube is copied exactly."""
    from tomosift.classify.inputs import fourier_crop

    transfer = gaussian_transfer(box_voxels, smooth_sigma_voxels) if smooth_sigma_voxels else None
    return fourier_crop(np.asarray(cube)[None], box_voxels, transfer)[0]


def gaussian_transfer(box_voxels: int, sigma_voxels: float) -> np.ndarray:
    """(m, m, m // 2 + 1) transfer function of a Gaussian blur of σ voxels (rfftn layout):
    exp(-2 π² σ² |k|²), k in cycles per voxel."""
    from tomosift.discovery.wedge import fourier_frequencies

    k2 = (fourier_frequencies(box_voxels) ** 2).sum(axis=-1) / box_voxels**2
    return np.exp(-2 * np.pi**2 * sigma_voxels**2 * k2)


def cube_starts(coordinates_voxels: np.ndarray, cube_voxels: int) -> np.ndarray:
    """(N, 3) x, y, z index of the first voxel of the cube around each (x, y, z) position:
    the position rounded to the nearest voxel (halves up) minus ``cube // 2``."""
    centres = np.floor(np.asarray(coordinates_voxels, dtype=np.float64) + 0.5).astype(np.int64)
    return centres - cube_voxels // 2


def inside(starts_xyz: np.ndarray, cube_voxels: int, size_xyz: Sequence[int]) -> np.ndarray:
    """(N,) bool: which cubes lie wholly inside a tomogram of ``size_xyz`` voxels."""
    size = np.asarray(size_xyz, dtype=np.int64)
    return np.all((starts_xyz >= 0) & (starts_xyz + cube_voxels <= size), axis=1)


def cut_cube(tomogram: np.ndarray, start_xyz: np.ndarray, cube_voxels: int) -> np.ndarray:
    """The (c, c, c) [z, y, x] cube of a tomogram starting at voxel (x, y, z) ``start_xyz``."""
    x, y, z = (int(s) for s in start_xyz)
    c = cube_voxels
    return tomogram[z : z + c, y : y + c, x : x + c]


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
                           dtype: str = "float32", progress: bool = True) -> None:
    """Stream ``n`` (box, box, box) volumes into a dataset file, atomically and reproducibly.

    ``volumes`` may raise :class:`TomosiftError` at any point: nothing is then left behind.
    """
    out_path = Path(out_path)
    string = h5py.string_dtype("utf-8")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        dataset = h5.create_dataset("volumes", shape=(n, box_voxels, box_voxels, box_voxels),
                                    dtype=np.dtype(dtype), chunks=(1, *(box_voxels,) * 3),
                                    track_times=False)
        bar = progress_bar(total=n, desc=out_path.name, unit="subtomo", enabled=progress)
        written = 0
        with bar:
            for volume in volumes:
                dataset[written] = volume.astype(dtype)
                written += 1
                bar.update(1)
        if written != n:
            raise TomosiftError(f"{out_path}: {written} volumes written, {n} expected")
        h5.create_dataset("labels", data=np.asarray(labels, dtype=np.int16), track_times=False)
        h5.create_dataset("class_names", shape=(len(class_names),), dtype=string,
                          data=list(class_names) or None, track_times=False)
        h5.create_dataset("split", data=np.asarray(split, dtype="S5"), track_times=False)
        write_particle_records(h5.create_group(PARTICLES_GROUP, track_order=True), records)
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


def _common_attrs(source, tilt_max_deg: float, polarity: str, labels_known: bool,
                  test_fraction: float, seed: int, dtype: str) -> dict:
    return {"source": str(source), "tilt_max_deg": float(tilt_max_deg), "polarity": polarity,
            "labels_known": bool(labels_known), "test_fraction": float(test_fraction),
            "seed": int(seed), "volume_dtype": dtype}


def _check_options(tilt_max_deg: float, polarity: str, test_fraction: float,
                   dtype: str) -> None:
    if polarity not in POLARITIES:
        raise TomosiftError(f"polarity must be dark or white, not '{polarity}'")
    if dtype not in VOLUME_DTYPES:
        raise TomosiftError(f"dtype must be float32 or float16, not '{dtype}'")
    if not 0 <= test_fraction <= 1:
        raise TomosiftError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if not 0 < tilt_max_deg <= 90:
        raise TomosiftError(f"tilt_max_deg must lie in (0, 90], got {tilt_max_deg}")


def _angles(particles: pd.DataFrame) -> np.ndarray:
    if all(c in particles.columns for c in ANGLE_COLUMNS):
        return particles[list(ANGLE_COLUMNS)].to_numpy(dtype=np.float64)
    return np.full((len(particles), 3), np.nan)


def _tomo_names(particles: pd.DataFrame) -> list[str]:
    if "rlnTomoName" in particles.columns:  # an empty name may read back as NaN
        return ["" if pd.isna(name) else str(name) for name in particles["rlnTomoName"]]
    return [""] * len(particles)


# -- extract ------------------------------------------------------------------------------------

def rows_of_tomogram(particles: pd.DataFrame, tomogram_path, star_path) -> np.ndarray:
    """(N,) bool: the rows of a particles table that belong to a tomogram: those whose
    ``rlnTomoName`` is the tomogram file's stem (or its name, or has that stem).

    All rows when the table has no ``rlnTomoName`` or only empty names; a table that names
    one other tomogram only is refused.
    """
    if "rlnTomoName" not in particles.columns:
        return np.ones(len(particles), dtype=bool)
    names = _tomo_names(particles)
    tomogram = Path(tomogram_path)
    chosen = np.array([n in (tomogram.stem, tomogram.name) or Path(n).stem == tomogram.stem
                       for n in names])
    if set(names) == {""}:
        return np.ones(len(particles), dtype=bool)
    if len(set(names)) == 1 and not chosen.any():
        raise TomosiftError(f"{star_path}: its particles are of tomogram '{names[0]}', but "
                            f"{tomogram_path} is '{tomogram.stem}' (rlnTomoName must be the "
                            "tomogram file's stem or name)")
    if not chosen.any():
        listed = sorted(set(names))
        shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
        raise TomosiftError(f"{star_path}: no particles of tomogram '{tomogram.stem}' "
                            f"({len(listed)} tomograms named: {shown})")
    return chosen


def extract_subtomograms(
    tomogram_path,
    picks_path,
    out_path,
    box_voxels: int = 40,
    voxel_size_nm: float | None = None,
    smooth_sigma_nm: float | None = None,
    truth_path=None,
    match_tolerance_voxels: float = 2.0,
    tilt_max_deg: float = 60.0,
    polarity: str = "dark",
    test_fraction: float = 0.5,
    seed: int = 1,
    dtype: str = "float32",
    progress: bool = True,
) -> ExtractionSummary:
    """Cut subtomograms around picks in a tomogram into a dataset file (see the module text).

    Args:
        tomogram_path: the tomogram (MRC; its header gives the voxel size v0).
        picks_path: RELION particles STAR with the picks' coordinates (rlnCoordinateX/Y/Z
            voxels or rlnCenteredCoordinateX/Y/ZAngst); rows of other tomograms are dropped.
        out_path: the dataset file (HDF5) to write.
        box_voxels: the output box edge (even).
        voxel_size_nm: the output voxel size (>= v0; None: v0, no binning).
        smooth_sigma_nm: Gaussian smoothing σ in nm (None: none).
        truth_path: a simulated tomogram's truth STAR (rlnClassNumber, tomosift_classes):
            labels by matching picks to it within ``match_tolerance_voxels``.
        tilt_max_deg: the tilt range the tomogram was recorded with.
        polarity: how the particles appear in the tomogram (recorded tomograms: dark).
        test_fraction, seed: the stratified split of labelled particles.
        dtype: float32 or float16 volumes.
        progress: report progress on stderr.
    """
    _check_options(tilt_max_deg, polarity, test_fraction, dtype)
    if box_voxels < 4 or box_voxels % 2:
        raise TomosiftError(f"--box must be an even number >= 4, got {box_voxels}")
    if smooth_sigma_nm is not None and not smooth_sigma_nm > 0:
        raise TomosiftError(f"--smooth-sigma-nm must be > 0, got {smooth_sigma_nm}")
    tomogram, v0 = read_mrc(tomogram_path)
    cube = source_box(box_voxels, voxel_size_nm, v0, tomogram_path)
    out_voxel_nm = v0 * cube / box_voxels
    size_xyz = tuple(int(s) for s in tomogram.shape[::-1])

    picks, _, pick_class_names = read_particles_star(picks_path)
    picks = picks[rows_of_tomogram(picks, tomogram_path, picks_path)].reset_index(drop=True)
    xyz = coordinates_of(picks, picks_path, size_xyz, v0)
    if not np.all(np.isfinite(xyz)):
        raise TomosiftError(f"{picks_path}: coordinates hold missing values")

    if truth_path is not None:
        labels, class_names = _labels_from_truth(xyz, truth_path, tomogram_path, size_xyz, v0,
                                                 match_tolerance_voxels)
    elif "rlnClassNumber" in picks.columns:
        labels, class_names = class_labels(picks["rlnClassNumber"].to_numpy(), pick_class_names,
                                           picks_path)
    else:
        labels, class_names = np.full(len(picks), -1, dtype=np.int64), []
    labels_known = truth_path is not None or "rlnClassNumber" in picks.columns

    starts = cube_starts(xyz, cube)
    kept = np.flatnonzero(inside(starts, cube, size_xyz))
    n_skipped = len(picks) - len(kept)
    if len(kept) == 0:
        raise TomosiftError(f"{picks_path}: all {len(picks)} picks lie too close to the edge of "
                            f"{tomogram_path} for a {cube}-voxel cube")
    labels = labels[kept]
    if truth_path is not None and FALSE_PICK_CLASS in class_names and not (
            labels == class_names.index(FALSE_PICK_CLASS)).any():
        class_names = class_names[:-1]  # every kept pick matched: no false_pick class
    tomo_names = _tomo_names(picks)
    records = ParticleRecords(
        tomo_name=[tomo_names[i] or Path(tomogram_path).stem for i in kept],
        coordinates_voxels=xyz[kept],
        tomogram_size_xyz=np.tile(np.asarray(size_xyz, dtype=np.int64), (len(kept), 1)),
        angles_deg=_angles(picks)[kept],
        image_name=[""] * len(kept),
        tomogram_voxel_size_nm=v0,
        centered_angst=centered_angstrom(xyz[kept], size_xyz, v0),
    )
    sigma_voxels = smooth_sigma_nm / out_voxel_nm if smooth_sigma_nm else None
    volumes = (resample_cube(cut_cube(tomogram, starts[i], cube), box_voxels, sigma_voxels)
               for i in kept)
    attrs = {
        "voxel_size_nm": float(out_voxel_nm), "box_voxels": int(box_voxels),
        "binning": cube / box_voxels, "source_box_voxels": int(cube),
        "tomogram_voxel_size_nm": float(v0),
        "smooth_sigma_nm": float(smooth_sigma_nm or 0.0),
        "picks": str(picks_path), "truth": "" if truth_path is None else str(truth_path),
        "match_tolerance_voxels": float(match_tolerance_voxels),
        "n_particles": len(kept), "n_skipped_edge": int(n_skipped),
        **_common_attrs(tomogram_path, tilt_max_deg, polarity, labels_known, test_fraction,
                        seed, dtype),
    }
    split = (stratified_split(labels, test_fraction, seed) if labels_known
             else np.full(len(kept), b"test", dtype="S5"))
    write_particle_dataset(out_path, volumes, len(kept), box_voxels, labels, class_names,
                           records, split, attrs, dtype, progress)
    return ExtractionSummary(len(kept), int(n_skipped), float(out_voxel_nm), cube / box_voxels,
                             labels_known, box_voxels, len(class_names))


def _labels_from_truth(picked_xyz: np.ndarray, truth_path, tomogram_path, size_xyz, v0: float,
                       tolerance_voxels: float) -> tuple[np.ndarray, list[str]]:
    """Labels of picks matched to a truth STAR; unmatched picks get ``false_pick`` (last)."""
    from tomosift.pick import match_picks

    truth, _, truth_names = read_particles_star(truth_path)
    if "rlnClassNumber" not in truth.columns:
        raise TomosiftError(f"{truth_path}: the truth table has no rlnClassNumber")
    truth = truth[rows_of_tomogram(truth, tomogram_path, truth_path)].reset_index(drop=True)
    truth_labels, names = class_labels(truth["rlnClassNumber"].to_numpy(), truth_names,
                                       truth_path)
    truth_xyz = coordinates_of(truth, truth_path, size_xyz, v0)
    matched = np.asarray(match_picks(picked_xyz, truth_xyz, tolerance_voxels), dtype=np.int64)
    names = [*names, FALSE_PICK_CLASS]
    labels = np.where(matched >= 0, truth_labels[np.maximum(matched, 0)], len(names) - 1)
    return labels.astype(np.int64), names


# -- import -------------------------------------------------------------------------------------

def import_particles(
    source,
    out_path,
    tilt_max_deg: float = 60.0,
    polarity: str = "white",
    labels: bool = True,
    test_fraction: float = 0.5,
    seed: int = 1,
    dtype: str = "float32",
    progress: bool = True,
) -> ImportSummary:
    """Copy existing subtomograms (MRC files) into a dataset file, streaming.

    Args:
        source: a RELION 5 particles STAR file (3D subtomograms: ``rlnImageName`` naming MRC
            files relative to the STAR file's folder; ``rlnClassNumber`` gives labels), a
            folder of MRC files (taken in name order; no labels) or a folder of class folders
            of MRC files (label = the folder's name; folders in name order).
        out_path: the dataset file (HDF5) to write.
        tilt_max_deg: the tilt range the subtomograms were recorded with.
        polarity: how the particles appear (RELION's convention: white).
        labels: False: ignore the labels the source gives.
        test_fraction, seed: the stratified split of labelled particles.
        dtype: float32 or float16 volumes.
        progress: report progress on stderr.
    """
    _check_options(tilt_max_deg, polarity, test_fraction, dtype)
    source = Path(source)
    if source.is_dir():
        files, class_labels_, names, records = _folder_particles(source)
        expected_voxel_nm = None
    elif source.is_file():
        files, class_labels_, names, records, expected_voxel_nm = _star_particles(source)
    else:
        raise TomosiftError(f"{source}: file or folder not found")
    if not labels or class_labels_ is None:
        class_labels_, names = np.full(len(files), -1, dtype=np.int64), []
    labels_known = bool(names)

    subtomograms = iter_mrc_subtomograms(files)
    first, voxel_nm = next(subtomograms)
    if expected_voxel_nm is not None and not same_voxel(voxel_nm, expected_voxel_nm):
        raise TomosiftError(f"{files[0]}: voxel size {voxel_nm:g} nm in the MRC header, "
                            f"{expected_voxel_nm:g} nm in {source}'s optics (rlnImagePixelSize)")
    box = first.shape[0]
    attrs = {"voxel_size_nm": float(voxel_nm if expected_voxel_nm is None else expected_voxel_nm),
             "box_voxels": int(box), "n_particles": len(files),
             **_common_attrs(source, tilt_max_deg, polarity, labels_known, test_fraction, seed,
                             dtype)}
    split = (stratified_split(class_labels_, test_fraction, seed) if labels_known
             else np.full(len(files), b"test", dtype="S5"))
    volumes = itertools.chain([first], (volume for volume, _ in subtomograms))
    write_particle_dataset(out_path, volumes, len(files), box, class_labels_, names, records,
                           split, attrs, dtype, progress)
    return ImportSummary(len(files), box, attrs["voxel_size_nm"], labels_known, len(names))


def _mrc_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in MRC_SUFFIXES), key=lambda p: p.name)


def _folder_particles(folder: Path):
    """(files, labels or None, class names, records) of a folder of MRC files or of class
    folders."""
    files = _mrc_files(folder)
    classes = [(d.name, _mrc_files(d)) for d in sorted(folder.iterdir(), key=lambda p: p.name)
               if d.is_dir() and not d.name.startswith(".")]
    classes = [(name, members) for name, members in classes if members]
    if files and classes:
        raise TomosiftError(f"{folder}: holds both MRC files and class folders of MRC files "
                            "(give one or the other)")
    if files:
        return files, None, [], ParticleRecords.unknown(len(files), [str(f) for f in files])
    if not classes:
        raise TomosiftError(f"{folder}: no MRC subtomograms (.mrc, .map, .rec) in the folder "
                            "or its subfolders")
    files = [f for _, members in classes for f in members]
    labels = np.repeat(np.arange(len(classes)), [len(members) for _, members in classes])
    return (files, labels, [name for name, _ in classes],
            ParticleRecords.unknown(len(files), [str(f) for f in files]))


def _refuse_2d_stacks(path: Path) -> None:
    """One-line error for RELION 5 pseudo-subtomograms (``rlnTomoSubTomosAre2DStacks`` 1)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "_rlnTomoSubTomosAre2DStacks":
                if fields[1] == "1":
                    raise TomosiftError(f"{path}: the subtomograms are 2D stacks "
                                        "(rlnTomoSubTomosAre2DStacks 1), which are not "
                                        "supported; write 3D subtomograms with RELION")
                return
            if fields[:1] == ["data_particles"]:
                return


def _star_particles(path: Path):
    """(files, labels or None, class names, records, optics voxel nm or None) of a STAR."""
    particles, optics, star_class_names = read_particles_star(path)
    _refuse_2d_stacks(path)
    if "rlnImageName" not in particles.columns:
        raise TomosiftError(f"{path}: no rlnImageName column (a particles STAR of "
                            "subtomogram images is needed; for picks use tomosift extract)")
    image_names = [str(n) for n in particles["rlnImageName"]]
    stacked = [n for n in image_names if "@" in n]
    if stacked:
        raise TomosiftError(f"{path}: image names like '{stacked[0]}' point into stacks, "
                            "which are not supported (one MRC file per subtomogram)")
    files = [path.parent / name for name in image_names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise TomosiftError(f"{path}: {len(missing)} of {len(files)} images not found, "
                            f"first {missing[0]}")
    voxel_nm = _optics_value_nm(optics, "rlnImagePixelSize", path)
    tomogram_voxel_nm = _optics_value_nm(optics, "rlnTomoTiltSeriesPixelSize", path)
    n = len(particles)
    coordinates = (coordinates_of(particles, path)
                   if all(c in particles.columns for c in COORDINATE_COLUMNS)
                   else np.full((n, 3), np.nan))
    centred = (particles[list(CENTERED_COLUMNS)].to_numpy(dtype=np.float64)
               if all(c in particles.columns for c in CENTERED_COLUMNS)
               else np.full((n, 3), np.nan))
    records = ParticleRecords(_tomo_names(particles), coordinates,
                              np.zeros((n, 3), dtype=np.int64), _angles(particles),
                              [str(f) for f in files],
                              float("nan") if tomogram_voxel_nm is None else tomogram_voxel_nm,
                              centred)
    labels, names = None, []
    if "rlnClassNumber" in particles.columns:
        labels, names = class_labels(particles["rlnClassNumber"].to_numpy(), star_class_names,
                                     path)
    return files, labels, names, records, voxel_nm


def _optics_value_nm(optics: pd.DataFrame | None, column: str, path: Path) -> float | None:
    """An optics column in Å as one value in nm (None when absent); refuses several."""
    if optics is None or column not in optics.columns:
        return None
    values = optics[column].to_numpy(dtype=np.float64) / ANGSTROM_PER_NM
    if not np.all(values > 0):
        raise TomosiftError(f"{path}: {column} must be > 0 in every optics group")
    other = [v for v in values if not same_voxel(v, values[0])]
    if other:
        raise TomosiftError(f"{path}: optics groups with {column} {values[0]:g} and "
                            f"{other[0]:g} nm (one voxel size per dataset)")
    return float(values[0])


def summary_line(out_path: os.PathLike | str, summary: ExtractionSummary | ImportSummary) -> str:
    """The one line the CLI prints about a written dataset."""
    classes = (f"{summary.n_classes} classes" if summary.labels_known else "labels unknown")
    if isinstance(summary, ExtractionSummary):
        return (f"{out_path}: {summary.n_extracted} subtomograms of {summary.box_voxels}³ voxels "
                f"at {summary.voxel_size_nm:.4g} nm (binning {summary.binning:.4g}), "
                f"{summary.n_skipped_edge} skipped at the tomogram's edge, {classes}")
    return (f"{out_path}: {summary.n_imported} subtomograms of {summary.box_voxels}³ voxels at "
            f"{summary.voxel_size_nm:.4g} nm imported, {classes}")
