"""Subtomograms cut out of tomograms around picks: ``tomosift extract``.

Around each pick, a cube of ``B0`` voxels of the tomogram is cut and Fourier-cropped to the
output box. Without a target voxel size ``B0`` is the box; with one, ``B0`` is the even integer
nearest ``box * target / v0`` (``v0``: the tomogram's voxel size) and the voxel size recorded
is the actual ``v0 * B0 / box``. Positions are rounded to the nearest tomogram voxel (the
cube's centre voxel ``B0 // 2`` is the pick's voxel, as RELION extracts): no interpolation and
no periodic shift of the box contents; the residual offset is at most half a tomogram voxel.
Optional Gaussian smoothing (the paper's σ = 1 nm) is applied in Fourier space at the output
voxel size. Cubes that leave the tomogram are skipped and counted.

The tomogram is read through a memory map (:func:`tomosift.io.mrc_memmap`): only the pages
of the cubes cut are read, so the memory needed does not grow with the tomogram (measured:
``benchmarks/extract_rss.py``); each cube is converted to float32 and checked for NaN. The
subtomograms are cut from the raw tomogram, whatever CTF correction picking used.

Labels: from a truth STAR (picks matched to true particles within a tolerance; unmatched picks
form the class ``false_pick``), else from the picks' ``rlnClassNumber``, else unknown. The
dataset is written by :func:`tomosift.tomograms.records.write_particle_dataset`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.discovery.particles import VOXEL_TOLERANCE
from tomosift.errors import TomosiftError
from tomosift.io import mrc_memmap, read_mrc, release_pages
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
    centered_angstrom,
    class_labels,
    coordinates_of,
    read_particles_star,
)

FALSE_PICK_CLASS = "false_pick"


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

    def line(self, out_path: os.PathLike | str) -> str:
        """The one line the CLI prints about the written dataset."""
        classes = f"{self.n_classes} classes" if self.labels_known else "labels unknown"
        return (f"{out_path}: {self.n_extracted} subtomograms of {self.box_voxels}³ voxels "
                f"at {self.voxel_size_nm:.4g} nm (binning {self.binning:.4g}), "
                f"{self.n_skipped_edge} skipped at the tomogram's edge, {classes}")


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


# -- extract ------------------------------------------------------------------------------------

def rows_of_tomogram(particles: pd.DataFrame, tomogram_path, star_path) -> np.ndarray:
    """(N,) bool: the rows of a particles table that belong to a tomogram: those whose
    ``rlnTomoName`` is the tomogram file's stem (or its name, or has that stem).

    All rows when the table has no ``rlnTomoName`` or only empty names; a table that names
    one other tomogram only is refused.
    """
    if "rlnTomoName" not in particles.columns:
        return np.ones(len(particles), dtype=bool)
    names = tomo_names(particles)
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
    memory_map: bool = True,
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
        memory_map: read the tomogram through a memory map (False: read it whole first, as
            before; the same bytes out, for comparison).
    """
    with contextlib.ExitStack() as stack:
        if memory_map:
            tomogram, v0 = stack.enter_context(mrc_memmap(tomogram_path))
        else:
            tomogram, v0 = read_mrc(tomogram_path)
        return _extract(tomogram, v0, tomogram_path, picks_path, out_path, box_voxels,
                        voxel_size_nm, smooth_sigma_nm, truth_path, match_tolerance_voxels,
                        tilt_max_deg, polarity, test_fraction, seed, dtype, progress)


def _extract(tomogram, v0, tomogram_path, picks_path, out_path, box_voxels, voxel_size_nm,
             smooth_sigma_nm, truth_path, match_tolerance_voxels, tilt_max_deg, polarity,
             test_fraction, seed, dtype, progress) -> ExtractionSummary:
    check_options(tilt_max_deg, polarity, test_fraction, dtype)
    if box_voxels < 4 or box_voxels % 2:
        raise TomosiftError(f"--box must be an even number >= 4, got {box_voxels}")
    if smooth_sigma_nm is not None and not smooth_sigma_nm > 0:
        raise TomosiftError(f"--smooth-sigma-nm must be > 0, got {smooth_sigma_nm}")
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
    pick_tomo_names = tomo_names(picks)
    records = ParticleRecords(
        tomo_name=[pick_tomo_names[i] or Path(tomogram_path).stem for i in kept],
        coordinates_voxels=xyz[kept],
        tomogram_size_xyz=np.tile(np.asarray(size_xyz, dtype=np.int64), (len(kept), 1)),
        angles_deg=particle_angles(picks)[kept],
        image_name=[""] * len(kept),
        tomogram_voxel_size_nm=v0,
        centered_angst=centered_angstrom(xyz[kept], size_xyz, v0),
    )
    sigma_voxels = smooth_sigma_nm / out_voxel_nm if smooth_sigma_nm else None
    volumes = (resample_cube(_float_cube(tomogram, starts[i], cube, tomogram_path), box_voxels,
                             sigma_voxels) for i in kept)
    attrs = {
        "voxel_size_nm": float(out_voxel_nm), "box_voxels": int(box_voxels),
        "binning": cube / box_voxels, "source_box_voxels": int(cube),
        "tomogram_voxel_size_nm": float(v0),
        "smooth_sigma_nm": float(smooth_sigma_nm or 0.0),
        "picks": str(picks_path), "truth": "" if truth_path is None else str(truth_path),
        "match_tolerance_voxels": float(match_tolerance_voxels),
        "n_particles": len(kept), "n_skipped_edge": int(n_skipped),
        **common_attrs(tomogram_path, tilt_max_deg, polarity, labels_known, test_fraction,
                        seed, dtype),
    }
    split = (stratified_split(labels, test_fraction, seed) if labels_known
             else np.full(len(kept), b"test", dtype="S5"))
    write_particle_dataset(out_path, volumes, len(kept), box_voxels, labels, class_names,
                           records, split, attrs, dtype, progress)
    return ExtractionSummary(len(kept), int(n_skipped), float(out_voxel_nm), cube / box_voxels,
                             labels_known, box_voxels, len(class_names))


def _float_cube(tomogram: np.ndarray, start_xyz: np.ndarray, cube_voxels: int,
                tomogram_path) -> np.ndarray:
    """:func:`cut_cube` as a float32 copy (read from a memory map here), refused with the
    file's name when it holds NaN or infinite values."""
    values = np.array(cut_cube(tomogram, start_xyz, cube_voxels), dtype=np.float32)
    release_pages(tomogram)
    if not np.all(np.isfinite(values)):
        raise TomosiftError(f"{tomogram_path}: the map contains NaN or infinite values")
    return values


def _labels_from_truth(picked_xyz: np.ndarray, truth_path, tomogram_path, size_xyz, v0: float,
                       tolerance_voxels: float) -> tuple[np.ndarray, list[str]]:
    """Labels of picks matched to a truth STAR; unmatched picks get ``false_pick`` (last)."""
    from tomosift.tomograms.pick import match_picks

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
