"""One average per training class, stored in the model file: the references of
``tomosift census --references training``.

At the end of a CNN's training, at most ``members`` (:data:`CLASS_AVERAGE_MEMBERS`, 100)
particles of each class of the train split (a seeded draw) are brought back into their
structure's frame with their true poses (``truth/rotations``, ``truth/shifts_voxels``: a
particle is the structure placed as f(R^T (x - t)), so ``transform_volume`` by R^T and
-R^T t undoes it), made bright as the discovery stage sees particles
(:func:`tomosift.discovery.particles.from_dataset`), and averaged with what each observed
(its missing wedge, turned with it, and its CTF when the dataset has one): the sum of the
un-posed spectra times ``T M`` over the sum of ``T² M`` plus a Wiener term of
:data:`WIENER_FRACTION` of its mean. Each average is then Fourier-cropped to
:data:`AVERAGE_BOX`³ (20³; a smaller training box is kept) and cut to the sphere of its
Nyquist shell: what the model file holds is a few (C, 20, 20, 20) float32 maps on voxels of
the training voxel size x box / 20 (0.92 nm x 40 / 20 = 1.84 nm). The empty class (``empty``)
gets a map of zeros.

The network never sees ``truth/``; only these averages read it. A dataset without true
poses (imported or extracted particles) gives no averages, and the model file then records
``class_averages: null``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tomosift.datasets import EMPTY_CLASS, open_dataset
from tomosift.errors import TomosiftError

#: The averages' box edge in voxels.
AVERAGE_BOX = 20
#: Particles averaged per class at most (a seeded draw from the train split).
CLASS_AVERAGE_MEMBERS = 100
#: The Wiener term as a fraction of the mean summed weight.
WIENER_FRACTION = 0.1


def has_poses(data_path: str | os.PathLike) -> bool:
    """Whether a dataset records every particle's true pose and its voxel size."""
    with open_dataset(data_path) as h5:
        return ("truth/rotations" in h5 and "truth/shifts_voxels" in h5
                and "voxel_size_nm" in h5.attrs and "tilt_max_deg" in h5.attrs)


def fourier_resize(volume: np.ndarray, size: int) -> np.ndarray:
    """(m, m, m) float32 resampling of an (n, n, n) volume by Fourier cropping (m < n:
    :func:`tomosift.classify.inputs.fourier_crop`) or zero-padding of its spectrum (m > n):
    the same frequencies on voxels n / m times the size, values (the mean) kept, voxel n // 2
    on m // 2. An even n's Nyquist planes are split evenly between -n/2 and +n/2."""
    volume = np.asarray(volume, dtype=np.float32)
    n = volume.shape[0]
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or size < 1:
        raise TomosiftError(f"cannot resample a volume of shape {volume.shape} to {size}³")
    if size == n:
        return volume.copy()
    if size < n:
        from tomosift.classify.inputs import fourier_crop

        return fourier_crop(volume[None], size)[0]
    spectrum = np.fft.fftshift(np.fft.fftn(volume))  # frequency 0 at n // 2
    if n % 2 == 0:  # index 0 is -n/2, which is also +n/2: half to each
        for axis in range(3):
            nyquist = np.take(spectrum, [0], axis=axis) / 2
            spectrum = np.concatenate([nyquist, np.take(spectrum, range(1, n), axis=axis),
                                       nyquist], axis=axis)
    start = size // 2 - n // 2
    stop = start + spectrum.shape[0]
    if start < 0 or stop > size:  # an odd size one above an even n
        raise TomosiftError(f"cannot pad a {n}³ spectrum to {size}³")
    padded = np.zeros((size,) * 3, dtype=np.complex128)
    padded[start:stop, start:stop, start:stop] = spectrum
    out = np.fft.ifftn(np.fft.ifftshift(padded)).real * (size / n) ** 3
    return out.astype(np.float32)


def band_limited(volume: np.ndarray, radius: float) -> np.ndarray:
    """(n, n, n) float32 volume with every frequency beyond ``radius`` (Fourier-index units)
    set to zero."""
    from tomosift.discovery.wedge import fourier_frequencies

    n = volume.shape[0]
    k = fourier_frequencies(n)
    keep = np.einsum("...i,...i->...", k, k) <= radius**2 + 1e-9
    spectrum = np.fft.rfftn(np.asarray(volume, dtype=np.float64)) * keep
    return np.fft.irfftn(spectrum, s=(n,) * 3, axes=(0, 1, 2)).astype(np.float32)


def unposed_average(data_path: str | os.PathLike, indices: np.ndarray,
                    wiener_fraction: float = WIENER_FRACTION) -> np.ndarray:
    """(n, n, n) float32 Wiener average of dataset particles ``indices`` brought back into
    their structure's frame by their true poses, bright, with what each observed (module
    docstring)."""
    from tomosift.discovery.particles import from_dataset
    from tomosift.discovery.refine import wiener_average
    from tomosift.discovery.rotations import transform_volume

    indices = np.asarray(indices, dtype=np.int64)
    particles = from_dataset(data_path, indices)
    observations = particles.observations()
    with open_dataset(data_path) as h5:
        rotations = np.asarray(h5["truth/rotations"][()], dtype=np.float64)[indices]
        shifts = np.asarray(h5["truth/shifts_voxels"][()], dtype=np.float64)[indices]
    n = particles.volumes.shape[-1]
    numerator = np.zeros((n, n, n // 2 + 1), dtype=np.complex128)
    denominator = np.zeros((n, n, n // 2 + 1), dtype=np.float64)
    for row, (rotation, shift) in enumerate(zip(rotations, shifts, strict=True)):
        back = rotation.T  # f(y) = particle(R y + t) = transform(particle, R^T, -R^T t)
        moved = transform_volume(particles.volumes[row], back, -back @ shift)
        weight, weight_squared = observations.filters(row, n, back)
        numerator += np.fft.rfftn(moved) * weight
        denominator += weight_squared
    return wiener_average(numerator, denominator, wiener_fraction)


def class_averages(data_path: str | os.PathLike, indices: np.ndarray, labels: np.ndarray,
                   class_names: list[str], members: int = CLASS_AVERAGE_MEMBERS, seed: int = 1,
                   box: int = AVERAGE_BOX, progress=None) -> tuple[np.ndarray, dict] | None:
    """The stored class averages of a training split: ((C, m, m, m) float32, the header
    record: voxel size, box, members per class, seconds), or None when the dataset has no
    true poses.

    Args:
        indices, labels: the split's dataset indices and class numbers (0 .. C - 1).
        class_names: the C names; ``empty`` gets zeros.
        members: particles averaged per class at most (a draw seeded with ``seed``).
        box: the averages' box (the data's when smaller).
        progress: a callable that takes one line of text, or None.
    """
    if members < 1:
        raise TomosiftError(f"class average members must be >= 1, got {members}")
    if not has_poses(data_path):
        return None
    started = time.perf_counter()
    with open_dataset(data_path) as h5:
        source_box = int(h5["volumes"].shape[1])
        voxel = float(h5.attrs["voxel_size_nm"])
    size = min(box, source_box)
    maps = np.zeros((len(class_names), size, size, size), dtype=np.float32)
    counts = []
    for number, name in enumerate(class_names):
        chosen = np.asarray(indices)[np.asarray(labels) == number]
        if name == EMPTY_CLASS or chosen.size == 0:
            counts.append(0)
            continue
        if chosen.size > members:
            chosen = np.random.default_rng([seed, 23, number]).choice(
                chosen, size=members, replace=False)
        average = unposed_average(data_path, np.sort(chosen))
        maps[number] = band_limited(fourier_resize(average, size), size / 2)
        counts.append(int(chosen.size))
    seconds = time.perf_counter() - started
    if progress:
        progress(f"class averages: {sum(1 for c in counts if c)} classes, {sum(counts)} train "
                 f"particles with their true poses, {size}³ ({seconds:.1f} s)")
    return maps, {"box": size, "voxel_size_nm": round(voxel * source_box / size, 6),
                  "members": counts, "max_members": int(members),
                  "seconds": round(seconds, 2)}


def stored_averages(model: dict, path: str | os.PathLike) -> tuple[dict[str, np.ndarray], float]:
    """A loaded model file's class averages, name -> (m, m, m) map (the empty class and
    classes without members left out), and their voxel size in nm; a model file without
    them is refused in one line naming it."""
    from tomosift.classify.modelfile import CLASS_AVERAGES_TENSOR

    maps = model.get("tensors", {}).get(CLASS_AVERAGES_TENSOR)
    record = model.get("class_averages")
    if maps is None or not record:
        raise TomosiftError(f"{path}: the model file holds no class averages (it was trained "
                            f"by an older tomosift, or on data without true poses); "
                            f"--references training needs them")
    names = list(model["class_names"])
    counts = record.get("members") or [1] * len(names)
    maps = maps.numpy() if hasattr(maps, "numpy") else np.asarray(maps)
    chosen = {name: np.asarray(maps[i], dtype=np.float32) for i, name in enumerate(names)
              if name != EMPTY_CLASS and counts[i] > 0}
    return chosen, float(record["voxel_size_nm"])
