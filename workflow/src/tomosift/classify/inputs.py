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
import torch

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
    flat = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32)).reshape(
        len(volumes), -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / std.clamp_min(1e-8)).reshape(volumes.shape).numpy()


def binned_box(box_voxels: int, factor: int) -> int:
    """The box edge after Fourier binning by ``factor``; the binned box must stay even."""
    if factor != 1 and box_voxels % (2 * factor):
        raise TomosiftError(f"input_binning {factor} needs a box divisible by {2 * factor}, "
                            f"got {box_voxels}")
    return box_voxels // factor


def fourier_crop(volumes: np.ndarray, box_voxels: int,
                 transfer: np.ndarray | None = None) -> np.ndarray:
    """Resample a (B, n, n, n) batch to (B, m, m, m) float32, m = ``box_voxels`` <= n, by
    keeping its central frequencies.

    Fourier cropping: the output holds exactly the input's frequencies below m/n of its Nyquist
    frequency, unaliased, on voxels n/m times larger; values keep their scale (the mean is
    preserved) and, for even n and m, the centre voxel n // 2 maps onto m // 2. ``transfer``:
    an (m, m, m // 2 + 1) array (rfftn layout) that multiplies the cropped spectrum (a
    filter). Without cropping or transfer the input is returned as it is (as float32).
    """
    volumes = np.asarray(volumes)
    n, m = volumes.shape[-1], int(box_voxels)
    if volumes.ndim != 4 or volumes.shape[1:] != (n, n, n) or not 1 <= m <= n:
        raise TomosiftError(f"cannot crop volumes of shape {volumes.shape[1:]} to {m}³")
    if m == n and transfer is None:
        return np.asarray(volumes, dtype=np.float32)
    # torch's FFT: about 6x numpy's on a 64 x 40³ batch with 2 threads (docs/benchmarks.md).
    spectrum = torch.fft.rfftn(torch.from_numpy(np.ascontiguousarray(volumes, np.float32)),
                               dim=(1, 2, 3))
    if m != n:
        keep = torch.cat([torch.arange(0, (m + 1) // 2), torch.arange(n - m // 2, n)])
        spectrum = spectrum[:, keep][:, :, keep][..., : m // 2 + 1]
    if transfer is not None:
        spectrum = spectrum * torch.from_numpy(np.asarray(transfer, dtype=np.float32))
    return (torch.fft.irfftn(spectrum, s=(m, m, m), dim=(1, 2, 3)) / (n / m) ** 3).numpy()


def fourier_bin(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Bin a (B, n, n, n) batch to (B, n/factor, ...) by :func:`fourier_crop`: the output
    holds the frequencies below 1/factor of the input's Nyquist frequency, on voxels
    ``factor`` times larger, with the mean preserved. ``factor`` must divide n."""
    if factor == 1:
        return volumes
    return fourier_crop(volumes, binned_box(volumes.shape[-1], factor))


def prepare_volumes(volumes: np.ndarray, normalise: str, binning: int = 1) -> np.ndarray:
    """What a network sees of raw (B, n, n, n) volumes: Fourier-binned by ``binning``
    (n -> n / binning), then, with ``normalise: per_subtomogram``, each scaled to zero mean
    and unit variance; contiguous float32."""
    volumes = fourier_bin(volumes, binning)
    if normalise == "per_subtomogram":
        volumes = normalise_volumes(volumes)
    return np.ascontiguousarray(volumes, dtype=np.float32)


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
    return prepare_volumes(volumes, normalise, binning)


# Above this many bytes in float32, a volume cache is held in float16 (half the memory).
CACHE_FLOAT32_LIMIT_BYTES = 2 * 1024**3


def cache_dtype(n_volumes: int, box_voxels: int, normalise: str) -> np.dtype | None:
    """The dtype :func:`cache_volumes` holds ``n_volumes`` volumes of ``box_voxels``³ in.

    float32 (exactly what :func:`read_volumes` gives) up to
    :data:`CACHE_FLOAT32_LIMIT_BYTES`, 2 GiB (8 388 subtomograms of 40³, 67 108 of 20³);
    above it float16, whose relative rounding of 2⁻¹¹ (about 5e-4) is far below the noise of a
    normalised subtomogram. Unnormalised volumes (``normalise: none``) may fall outside
    float16's range: above the limit they are not cached (None).
    """
    if n_volumes * box_voxels**3 * 4 <= CACHE_FLOAT32_LIMIT_BYTES:
        return np.dtype(np.float32)
    return np.dtype(np.float16) if normalise == "per_subtomogram" else None


def cache_volumes(h5, indices: np.ndarray, normalise: str, binning: int = 1,
                  chunk: int = 256, dtype: np.dtype | None = None) -> np.ndarray:
    """Every volume at ``indices``, prepared as :func:`read_volumes` does, in one (N, m, m, m)
    array, m = n / ``binning``, read ``chunk`` volumes at a time.

    ``dtype`` (default: :func:`cache_dtype`'s choice, float32 when it says None) is the
    array's type; rows follow ``indices``. Binning and normalisation act on each volume alone,
    so the float32 array equals what batches of :func:`read_volumes` give.
    """
    box = binned_box(int(h5["volumes"].shape[1]), binning)
    if dtype is None:
        dtype = cache_dtype(len(indices), box, normalise) or np.dtype(np.float32)
    out = np.empty((len(indices), box, box, box), dtype=dtype)
    for start in range(0, len(indices), chunk):
        out[start : start + chunk] = read_volumes(h5, indices[start : start + chunk],
                                                  normalise, binning)
    return out
