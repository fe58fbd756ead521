"""What a network sees: the subtomograms of a split, Fourier-binned and normalised.

Normalisation: each subtomogram is scaled to zero mean and unit variance before it enters a
network (``normalise: per_subtomogram``, the default). The authors' code used the raw values.
We normalise because the paper's simulator sets the noise per particle, so raw intensities
differ by orders of magnitude between classes and datasets; unnormalised inputs make the fixed
learning rate of the paper's recipe too large for some datasets and too small for others.
``normalise: none`` reproduces the paper's choice.

These readers open only ``volumes``, ``labels``, ``split`` and ``class_names`` (and the file's
attributes): never the ground truth in ``truth/`` (see :mod:`tomosift.datasets`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomosift.datasets import class_names_of, open_dataset
from tomosift.errors import TomosiftError

# Volumes hashed into a dataset's identity (evenly spaced; with the labels, split and
# attributes they tell a re-simulated dataset from the one a checkpoint was trained on).
IDENTITY_VOLUMES = 16


@dataclass
class SplitData:
    """Indices and labels of one split of a dataset file (volumes stay on disk)."""

    path: Path
    indices: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    box_voxels: int
    attrs: dict = field(default_factory=dict)


def read_split(path: str | os.PathLike, split: str = "train",
               exclude_classes: Sequence[str] = ()) -> SplitData:
    """Which particles form a split (``train``, ``test`` or ``all``) of a dataset file.

    ``exclude_classes`` (the leave-one-out experiment): drop every particle of these classes;
    the remaining classes are renumbered 0 .. C' - 1 in their original order and
    ``class_names`` lists only them.
    """
    path = Path(path)
    with open_dataset(path) as h5:
        labels = h5["labels"][()].astype(np.int64)
        splits = h5["split"][()].astype(str)
        names = class_names_of(h5)
        box = int(h5["volumes"].shape[1])
        attrs = {k: plain(v) for k, v in h5.attrs.items()}
    if split == "all":
        chosen = np.arange(len(labels))
    elif split in ("train", "test"):
        chosen = np.flatnonzero(splits == split)
    else:
        raise TomosiftError(f"split must be train, test or all, not '{split}'")
    chosen_labels = labels[chosen]
    if exclude_classes:
        unknown = sorted(set(exclude_classes) - set(names))
        if unknown:
            raise TomosiftError(f"{path}: no class {', '.join(unknown)} to exclude")
        kept = [i for i, name in enumerate(names) if name not in set(exclude_classes)]
        renumber = np.full(len(names), -1, dtype=np.int64)
        renumber[kept] = np.arange(len(kept))
        keep = renumber[chosen_labels] >= 0
        chosen, chosen_labels = chosen[keep], renumber[chosen_labels[keep]]
        names = [names[i] for i in kept]
    if len(chosen) == 0:
        raise TomosiftError(f"{path}: the {split} split is empty")
    return SplitData(path, chosen, chosen_labels, names, box, attrs)


def plain(value):
    """An HDF5 attribute as a plain Python value (lists, ints, floats, strings)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def dataset_identity(path: str | os.PathLike) -> str:
    """A SHA-256 of what defines a dataset's content: its attributes, labels, split, class
    names and a sample of its volumes (not its path, not its ground truth)."""
    digest = hashlib.sha256()
    with open_dataset(path) as h5:
        for key in sorted(h5.attrs):
            digest.update(f"{key}={plain(h5.attrs[key])!r};".encode())
        digest.update("\n".join(class_names_of(h5)).encode())
        for name in ("labels", "split"):
            digest.update(np.ascontiguousarray(h5[name][()]).tobytes())
        volumes = h5["volumes"]
        for index in np.unique(np.linspace(0, len(volumes) - 1, IDENTITY_VOLUMES).astype(int)):
            digest.update(np.ascontiguousarray(volumes[int(index)]).tobytes())
    return digest.hexdigest()


def normalise_volumes(volumes: np.ndarray) -> np.ndarray:
    """Each (n, n, n) volume of a (B, n, n, n) batch to zero mean and unit variance."""
    flat = volumes.reshape(len(volumes), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1, keepdims=True)
    return ((flat - mean) / np.maximum(std, 1e-8)).reshape(volumes.shape)


def binned_box(box_voxels: int, factor: int) -> int:
    """The box edge after Fourier binning by ``factor``; the binned box must stay even."""
    if factor != 1 and box_voxels % (2 * factor):
        raise TomosiftError(f"input_binning {factor} needs a box divisible by {2 * factor}, "
                            f"got {box_voxels}")
    return box_voxels // factor


def fourier_bin(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Bin a (B, n, n, n) batch to (B, n/factor, ...) by keeping its central frequencies.

    Fourier cropping: the output holds exactly the frequencies below 1/factor of the input's
    Nyquist frequency, unaliased, and its voxels are ``factor`` times larger. Values keep
    their scale (the mean is preserved). ``factor`` must divide n.
    """
    if factor == 1:
        return volumes
    n = volumes.shape[-1]
    m = binned_box(n, factor)
    spectrum = np.fft.rfftn(volumes, axes=(1, 2, 3))
    keep = np.r_[0 : m // 2, n - m // 2 : n]
    cropped = spectrum[:, keep][:, :, keep][..., : m // 2 + 1]
    return (np.fft.irfftn(cropped, s=(m, m, m), axes=(1, 2, 3)) / factor**3).astype(np.float32)


def read_volumes(h5, indices: np.ndarray, normalise: str, binning: int = 1) -> np.ndarray:
    """(B, n, n, n) float32 volumes at ``indices`` (any order) from an open dataset file,
    Fourier-binned by ``binning`` (n -> n / binning) and then normalised.

    Volumes are read one chunk at a time: h5py's point selections on a virtual dataset are
    about ten times slower than single-volume reads.
    """
    dataset = h5["volumes"]
    volumes = np.empty((len(indices), *dataset.shape[1:]), dtype=np.float32)
    for row, index in enumerate(indices):
        volumes[row] = dataset[int(index)]
    volumes = fourier_bin(volumes, binning)
    return normalise_volumes(volumes) if normalise == "per_subtomogram" else volumes
