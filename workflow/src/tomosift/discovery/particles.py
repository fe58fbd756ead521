"""Where the subtomograms of the discovery stage come from: a tomosift dataset, a RELION
particles STAR file or plain MRC files.

All three become a :class:`ParticleSet`: the volumes (in memory: discovery works on clusters
and subsets, not on millions at once), an identifier per particle, the voxel size and, when
known, the true class of each particle. Volumes are returned with the particle bright
(positive density): tomosift datasets recorded with ``polarity: dark`` are negated, MRC and STAR
inputs are taken as white (RELION's convention) unless ``invert`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomosift.errors import TomosiftError
from tomosift.io import read_mrc
from tomosift.simulate.ctf import Optics

VOXEL_TOLERANCE = 1e-3  # relative: voxel sizes that agree to 0.1 % are the same


@dataclass
class ParticleSet:
    """Subtomograms of one source.

    Attributes:
        volumes: (N, n, n, n) float32, particles bright.
        ids: (N,) identifiers: dataset indices (as strings) or file paths.
        voxel_size_nm: voxel edge.
        labels: (N,) true class indices, or None.
        class_names: names of the label indices (empty when unknown).
        tilt_range_deg: the tilt range the dataset records, or None (then the caller's).
        indices: (N,) dataset indices, for datasets.
        fourier_weights: (N, n, n, n // 2 + 1) float32 per-particle Fourier coverage (rfftn
            layout, the particle's own frame): the summed CTF² x dose weight² of the tilts it
            was reconstructed from (0 where unobserved). When set, the volumes are
            CTF-corrected (Wiener-divided) wherever the weight is > 0. None = unknown.
        defocus_um: (N,) per-particle defocus (underfocus > 0) of CTF-uncorrected volumes, or
            None; with ``optics`` it gives each particle's CTF.
        optics: the microscope (voltage, Cs, amplitude contrast) of ``defocus_um``.
    """

    volumes: np.ndarray
    ids: list[str]
    voxel_size_nm: float
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    tilt_range_deg: tuple[float, float] | None = None
    indices: np.ndarray | None = None
    fourier_weights: np.ndarray | None = None
    defocus_um: np.ndarray | None = None
    optics: Optics | None = None

    def observations(self, tilt_range_deg: tuple[float, float] | None = None):
        """What each particle observed, for :func:`tomosift.discovery.refine.refine`: its
        Fourier weights, or its CTF (defocus) within the tilt range (``tilt_range_deg``, else
        the recorded one, else ±60°)."""
        from tomosift.discovery.refine import Observations

        low, high = tilt_range_deg or self.tilt_range_deg or (-60.0, 60.0)
        return Observations(self.voxel_size_nm, low, high, self.defocus_um, self.optics,
                            self.fourier_weights)


def from_dataset(path: str | os.PathLike, indices: Sequence[int] | None = None,
                 split: str | None = None) -> ParticleSet:
    """Particles of a tomosift dataset: ``indices`` (any order), or a whole split.

    What each particle observed comes along: its ``fourier_weights`` when the dataset has them
    (CTF-corrected imports), else its defocus (``particles/defocus_um``, or for simulated
    datasets the defocus the simulator drew, ``truth/defocus_um``: the value CTF estimation
    gives for real data) with the dataset's optics when the CTF was on.
    """
    from tomosift.classify.inputs import read_split, read_volumes
    from tomosift.datasets import class_names_of, open_dataset

    if indices is None:
        indices = read_split(path, split or "all").indices
    indices = np.asarray(indices, dtype=np.int64)
    with open_dataset(path) as h5:
        size = len(h5["volumes"])
        if len(indices) and (indices.min() < 0 or indices.max() >= size):
            raise TomosiftError(f"{path}: particle indices must lie in [0, {size})")
        volumes = read_volumes(h5, indices, normalise="none")
        labels = h5["labels"][()][indices].astype(np.int64)
        names = class_names_of(h5)
        voxel = float(h5.attrs["voxel_size_nm"])
        tilt = float(h5.attrs["tilt_max_deg"])
        if str(h5.attrs.get("polarity", "white")) == "dark":
            volumes = -volumes
        weights, defocus, optics = _observed(h5, indices)
    return ParticleSet(volumes, [str(i) for i in indices], voxel, labels, names, (-tilt, tilt),
                       indices, weights, defocus, optics)


def _observed(h5, indices: np.ndarray
              ) -> tuple[np.ndarray | None, np.ndarray | None, Optics | None]:
    """(fourier_weights, defocus_um, optics) of dataset particles, each None when unknown."""
    if "fourier_weights" in h5:
        order = np.argsort(indices)
        weights = np.empty((len(indices), *h5["fourier_weights"].shape[1:]), dtype=np.float32)
        weights[order] = h5["fourier_weights"][np.sort(indices)]
        return weights, None, None
    if not bool(h5.attrs.get("ctf_enabled", False)) or bool(h5.attrs.get("ctf_corrected", False)):
        return None, None, None
    for name in ("particles/defocus_um", "truth/defocus_um"):
        if name in h5:
            defocus = np.asarray(h5[name][()], dtype=np.float64)[indices]
            optics = Optics(voltage_kv=float(h5.attrs.get("voltage_kv", 300.0)),
                            cs_mm=float(h5.attrs.get("cs_mm", 2.0)),
                            amplitude_contrast=float(h5.attrs.get("amplitude_contrast", 0.07)))
            return None, defocus, optics
    return None, None, None


def same_voxel(a: float, b: float) -> bool:
    """Whether two voxel sizes agree to :data:`VOXEL_TOLERANCE` (relative)."""
    return abs(a - b) <= VOXEL_TOLERANCE * max(a, b)


def iter_mrc_subtomograms(paths: Sequence[str | os.PathLike]
                          ) -> Iterator[tuple[np.ndarray, float]]:
    """(volume (n, n, n) float32, voxel size nm) of each MRC file in order, one file in memory
    at a time; raises a one-line error naming the file when one is not cubic or differs from
    the first in box or voxel size."""
    if not paths:
        raise TomosiftError("no MRC subtomograms given")
    first_shape, first_voxel = None, None
    for path in paths:
        volume, voxel = read_mrc(path)
        if volume.shape != (volume.shape[0],) * 3:
            raise TomosiftError(f"{path}: subtomograms must be cubic, got {volume.shape}")
        if first_shape is None:
            first_shape, first_voxel = volume.shape, voxel
        elif volume.shape != first_shape:
            raise TomosiftError(f"{path}: box {volume.shape} differs from {paths[0]}'s "
                                f"{first_shape}")
        elif not same_voxel(voxel, first_voxel):
            raise TomosiftError(f"{path}: voxel size {voxel:g} nm differs from {paths[0]}'s "
                                f"{first_voxel:g} nm")
        yield volume, voxel


def from_mrc_files(paths: Sequence[str | os.PathLike], invert: bool = False) -> ParticleSet:
    """Particles from MRC files, one cubic subtomogram each, all of one box and voxel size."""
    volumes, voxel_sizes = zip(*iter_mrc_subtomograms(paths), strict=True)
    stack = np.stack(volumes).astype(np.float32)
    return ParticleSet(-stack if invert else stack, [str(p) for p in paths], voxel_sizes[0])


def from_star(path: str | os.PathLike, invert: bool = False) -> ParticleSet:
    """Particles of a RELION particles STAR file (3D subtomograms: ``rlnImageName`` naming MRC
    files, relative to the STAR file's folder); ``rlnClassNumber``, when present, becomes the
    labels."""
    from tomosift.tomograms.relion import class_labels, read_particles_star
    from tomosift.tomograms.stacks import is_2d_stack_star, is_optimisation_set

    path = Path(path)
    if is_optimisation_set(path) or is_2d_stack_star(path):
        return from_stack_star(path)
    table, _, names = read_particles_star(path)
    if "rlnImageName" not in table.columns:
        raise TomosiftError(f"{path}: no particles table with rlnImageName")
    files = [(path.parent / str(name).split("@")[-1]) for name in table["rlnImageName"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TomosiftError(f"{path}: {len(missing)} image(s) not found, first {missing[0]}")
    particles = from_mrc_files(files, invert)
    if "rlnClassNumber" in table.columns:
        particles.labels, particles.class_names = class_labels(
            table["rlnClassNumber"].to_numpy(), names, path)
    return particles


def from_stack_star(path: str | os.PathLike,
                    tomograms: str | os.PathLike | None = None) -> ParticleSet:
    """Particles of a RELION 5 / WarpTools 2D-stack export (an optimisation set, or a particles
    STAR with its tomograms file), reconstructed by :mod:`tomosift.tomograms.stacks`: volumes
    CTF-corrected, with their ``fourier_weights`` (``defocus_um`` stays None: it describes
    CTF-uncorrected volumes)."""
    from tomosift.tomograms.relion import class_labels
    from tomosift.tomograms.stacks import iter_reconstructed, read_stack_particles

    stacks = read_stack_particles(path, tomograms)
    pairs = list(iter_reconstructed(stacks))
    volumes = np.stack([v for v, _ in pairs]).astype(np.float32)
    weights = np.stack([w for _, w in pairs]).astype(np.float32)
    group = stacks.optics_of(0)
    tilt = float(max(np.max(s.tilt_angles_deg) for s in stacks.tomograms.values()))
    particles = ParticleSet(
        volumes, [str(p) for p in stacks.images], stacks.pixel_size_a / 10.0,
        tilt_range_deg=(-tilt, tilt), fourier_weights=weights,
        optics=Optics(voltage_kv=group.voltage_kv, cs_mm=group.cs_mm,
                      amplitude_contrast=group.amplitude_contrast, mtf_enabled=False))
    if "rlnClassNumber" in stacks.table.columns:
        particles.labels, particles.class_names = class_labels(
            stacks.table["rlnClassNumber"].to_numpy(), stacks.class_names, stacks.path)
    return particles


def load_particles(sources: Sequence[str | os.PathLike], indices: Sequence[int] | None = None,
                   invert: bool = False) -> ParticleSet:
    """Particles from one ``.h5`` dataset, one ``.star`` file or several ``.mrc`` files."""
    sources = [Path(s) for s in sources]
    if not sources:
        raise TomosiftError("no particles given (a dataset .h5, a .star file or .mrc files)")
    first = sources[0]
    if first.suffix in (".h5", ".hdf5"):
        if len(sources) > 1:
            raise TomosiftError(f"{first}: give one dataset at a time")
        return from_dataset(first, indices)
    if indices is not None:
        raise TomosiftError(f"{first}: a cluster subset needs a tomosift dataset")
    if first.suffix == ".star":
        return from_star(first, invert)
    if all(s.suffix in (".mrc", ".map", ".rec") for s in sources):
        return from_mrc_files(sources, invert)
    raise TomosiftError(f"{first}: expected a dataset (.h5), a particles .star or .mrc files")
