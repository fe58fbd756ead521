"""Batches of subtomograms for feature extraction at scale: one HDF5 read per batch.

A :class:`BatchVolumes` serves whole batches of contiguous dataset indices (item ``i`` is
the ``i``-th batch), each read as one ``volumes[start:stop]`` slice, Fourier-binned and
normalised exactly as training did (:func:`tomosift.classify.inputs.prepare_volumes`), so a
``torch.utils.data.DataLoader`` with ``batch_size=None`` moves finished batches from its
worker processes. Memory is bounded by the batches in flight (``workers · prefetch_factor``),
whatever the number of particles. Volumes are multiplied by ``sign`` before binning: -1 feeds
a network trained on particles of the other polarity (dark vs white) what its training saw.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tomosift.classify.inputs import prepare_volumes
from tomosift.errors import TomosiftError

PREFETCH_FACTOR = 2


def batch_ranges(start: int, stop: int, batch_size: int,
                 part_size: int | None = None) -> list[tuple[int, int]]:
    """[a, b) ranges of at most ``batch_size`` covering [start, stop); with ``part_size``, no
    range crosses ``start + j · part_size`` (so every part is made of whole batches)."""
    if batch_size < 1:
        raise TomosiftError(f"batch size must be >= 1, got {batch_size}")
    ranges = []
    a = start
    while a < stop:
        b = min(a + batch_size, stop)
        if part_size:
            b = min(b, start + ((a - start) // part_size + 1) * part_size)
        ranges.append((a, b))
        a = b
    return ranges


class BatchVolumes(Dataset):
    """Batches [a, b) of one dataset file as (B, n', n', n') float32 tensors.

    Item ``i``: ``(volumes, a, b)``. Each process opens its own h5py handle on first use (a
    handle is never shared across ``fork``: HDF5 is not fork-safe). ``sign``: the factor
    (1 or -1) the stored volumes are multiplied by before binning.
    """

    def __init__(self, path: str | os.PathLike, ranges: list[tuple[int, int]],
                 normalise: str = "per_subtomogram", input_binning: int = 1, *,
                 sign: float = 1.0):
        self.path = Path(path)
        self.ranges = list(ranges)
        self.normalise = normalise
        self.input_binning = int(input_binning)
        self.sign = float(sign)
        self._h5 = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.ranges)

    def _volumes(self):
        if self._h5 is None or self._pid != os.getpid():
            from tomosift.datasets import open_dataset

            self._h5 = open_dataset(self.path)
            self._pid = os.getpid()
        return self._h5["volumes"]

    def read(self, a: int, b: int) -> np.ndarray:
        """Raw (B, n, n, n) float32 volumes [a, b) (one HDF5 read)."""
        return np.asarray(self._volumes()[a:b], dtype=np.float32)

    def prepare(self, volumes: np.ndarray) -> np.ndarray:
        """The sign, then binning and normalisation as in training
        (:func:`~tomosift.classify.inputs.prepare_volumes`)."""
        if self.sign != 1.0:
            volumes = volumes * np.float32(self.sign)
        return prepare_volumes(volumes, self.normalise, self.input_binning)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        a, b = self.ranges[item]
        return torch.from_numpy(self.prepare(self.read(a, b))), a, b

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def make_loader(path: str | os.PathLike, start: int, stop: int, batch_size: int,
                workers: int = 0, pin_memory: bool = False, normalise: str = "per_subtomogram",
                input_binning: int = 1, part_size: int | None = None, *,
                sign: float = 1.0) -> DataLoader:
    """A DataLoader of the batches of [start, stop) (see :class:`BatchVolumes`), in order.

    ``workers`` processes read and prepare batches ahead (0: in this process);
    ``pin_memory`` for fast copies to a GPU; ``sign``: multiplies the volumes before binning.
    """
    if workers < 0:
        raise TomosiftError(f"workers must be >= 0, got {workers}")
    dataset = BatchVolumes(path, batch_ranges(start, stop, batch_size, part_size), normalise,
                           input_binning, sign=sign)
    extra = {"prefetch_factor": PREFETCH_FACTOR} if workers > 0 else {}
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False, **extra)
