"""Existing subtomograms into a dataset: ``tomosift import-particles``.

Sources: a RELION particles STAR file of 3D subtomograms (``rlnImageName`` naming MRC files),
a RELION 5 / WarpTools 2D-stack export (an optimisation set, or a particles STAR with
``rlnTomoSubTomosAre2DStacks 1`` and its tomograms file; reconstructed by
:mod:`tomosift.tomograms.stacks`), a folder of MRC files, or a folder of class folders. The
dataset is written by :func:`tomosift.tomograms.records.write_particle_dataset`, streaming.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.discovery.particles import iter_mrc_subtomograms, same_voxel
from tomosift.errors import TomosiftError
from tomosift.io import ANGSTROM_PER_NM
from tomosift.tomograms.records import (
    ParticleRecords,
    check_options,
    common_attrs,
    particle_angles,
    stratified_split,
    tomo_names,
    write_particle_dataset,
)
from tomosift.tomograms.relion import (
    CENTERED_COLUMNS,
    COORDINATE_COLUMNS,
    class_labels,
    coordinates_of,
    read_particles_star,
)
from tomosift.tomograms.stacks import (
    import_stack_particles,
    is_2d_stack_star,
    is_optimisation_set,
)

MRC_SUFFIXES = (".mrc", ".map", ".rec")


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_particles` wrote."""

    n_imported: int
    box_voxels: int
    voxel_size_nm: float
    labels_known: bool
    n_classes: int = 0

    def line(self, out_path: os.PathLike | str) -> str:
        """The one line the CLI prints about the written dataset."""
        classes = f"{self.n_classes} classes" if self.labels_known else "labels unknown"
        return (f"{out_path}: {self.n_imported} subtomograms of {self.box_voxels}³ voxels at "
                f"{self.voxel_size_nm:.4g} nm imported, {classes}")


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
    tomograms=None,
) -> ImportSummary:
    """Copy existing subtomograms (MRC files) into a dataset file, streaming; reconstruct
    2D-stack particles (:func:`tomosift.tomograms.stacks.import_stack_particles`).

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
        tomograms: the tomograms STAR of a 2D-stack particles file (default: the one its
            optimisation set names, or one found beside it); the tilt range then comes from
            its projection matrices and ``tilt_max_deg`` is ignored.
    """
    check_options(tilt_max_deg, polarity, test_fraction, dtype)
    source = Path(source)
    if source.is_file() and (tomograms is not None or is_optimisation_set(source)
                             or is_2d_stack_star(source)):
        return import_stack_particles(source, out_path, tomograms, polarity, labels,
                                      test_fraction, seed, dtype, progress)
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
             **common_attrs(source, tilt_max_deg, polarity, labels_known, test_fraction, seed,
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


def _star_particles(path: Path):
    """(files, labels or None, class names, records, optics voxel nm or None) of a STAR."""
    particles, optics, star_class_names = read_particles_star(path)
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
    records = ParticleRecords(tomo_names(particles), coordinates,
                              np.zeros((n, 3), dtype=np.int64), particle_angles(particles),
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
