"""Simulated subtomogram datasets: the HDF5 contract that training and discovery read.

One file per (SNR, tilt range) grid point holds:

============== ================== ===========================================================
dataset        shape, dtype       meaning
============== ================== ===========================================================
volumes        (N, n, n, n) f4/f2 subtomograms indexed [z, y, x]; one volume per chunk
labels         (N,) int16         class index into ``class_names``
class_names    (C,) str           structure names; the empty class is called ``empty``
rotations      (N, 3, 3) f8       pose rotation R (x, y, z): the map was placed as f(R^T(x-t))
shifts_voxels  (N, 3) f8          pose shift t (x, y, z) in voxels
split          (N,) bytes         ``train`` or ``test`` (stratified by class, seeded)
signal_variance (N,) f8           variance of the noise-free reconstruction over the box
noise_sigma    (N,) f8            projection noise standard deviation used
============== ================== ===========================================================

File attributes record every physical and random parameter (voxel size, box, SNR, tilt range
and step, CTF/MTF, reconstruction mode, seed, tomosift version, ...).

Datasets are simulated in shards (independent jobs); a shard file has the same layout for its
index range ``[index_start, index_stop)``. The joined file keeps the small per-particle arrays
and maps ``volumes`` onto the shards' volumes through an HDF5 virtual dataset, so nothing large
is copied. Paths to the shards are stored relative to the joined file's folder.

Volumes are the raw reconstructions (no normalisation), polarity as recorded: particles are
dark (negative) when the CTF is on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from tomosift import __version__
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.simulate.poses import dataset_key, noise_rng, pose_rng, random_pose
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum

EMPTY_CLASS = "empty"
PER_PARTICLE_ARRAYS = ("labels", "rotations", "shifts_voxels", "split", "signal_variance",
                       "noise_sigma")


@dataclass(frozen=True)
class DatasetPlan:
    """What a dataset contains: classes, counts, SNR and the random choices.

    Particle ``i`` belongs to class ``i // per_class`` of ``class_names`` (the structures in
    config order, then ``empty`` when ``empty_class``).
    """

    structure_names: tuple[str, ...]
    per_class: int
    snr: float
    seed: int = 1
    empty_class: bool = True
    max_shift_voxels: float = 4.0
    test_fraction: float = 0.5
    volume_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.structure_names:
            raise TomosiftError("the dataset needs at least one structure")
        if self.snr <= 0:
            raise TomosiftError(f"SNR must be > 0, got {self.snr}")
        if self.per_class < 2:
            raise TomosiftError(f"per_class must be >= 2, got {self.per_class}")
        if self.volume_dtype not in ("float32", "float16"):
            raise TomosiftError(f"volume_dtype must be float32 or float16, not {self.volume_dtype}")

    @property
    def class_names(self) -> list[str]:
        return list(self.structure_names) + ([EMPTY_CLASS] if self.empty_class else [])

    @property
    def n_particles(self) -> int:
        return len(self.class_names) * self.per_class

    def shard_ranges(self, shard_size: int) -> list[tuple[int, int]]:
        """[start, stop) index ranges of the shards of ``shard_size`` particles."""
        return [(s, min(s + shard_size, self.n_particles))
                for s in range(0, self.n_particles, shard_size)]

    def is_test(self, label: int) -> np.ndarray:
        """(per_class,) bool: which members of class ``label`` are in the test split."""
        rng = np.random.default_rng([self.seed, 2, label])
        n_test = round(self.per_class * self.test_fraction)
        flags = np.zeros(self.per_class, dtype=bool)
        flags[rng.permutation(self.per_class)[:n_test]] = True
        return flags


def settings_attributes(settings: SimulationSettings, plan: DatasetPlan) -> dict:
    """Flat HDF5 attributes describing a dataset completely."""
    optics = asdict(settings.optics)
    attrs = {
        "tomosift_version": __version__,
        "voxel_size_nm": settings.voxel_size_nm,
        "box_voxels": settings.box_voxels,
        "snr": plan.snr,
        "tilt_max_deg": settings.tilt_max_deg,
        "tilt_step_deg": settings.tilt_step_deg,
        "tilt_angles_deg": settings.tilt_angles_deg,
        "reconstruction": settings.reconstruction,
        "noise_stage": settings.noise_stage,
        "pad_factor": settings.pad_factor,
        "seed": plan.seed,
        "per_class": plan.per_class,
        "empty_class": plan.empty_class,
        "max_shift_voxels": plan.max_shift_voxels,
        "test_fraction": plan.test_fraction,
        "volume_dtype": plan.volume_dtype,
        "n_particles": plan.n_particles,
        "polarity": "dark" if settings.optics.ctf_enabled else "bright",
        "units": "raw reconstruction of the input density (no normalisation)",
        "snr_definition": "var(noise-free reconstruction) / var(noise) over the box",
    }
    attrs.update({key: value for key, value in optics.items()})
    return attrs


def simulate_shard(
    densities: Sequence[np.ndarray],
    plan: DatasetPlan,
    settings: SimulationSettings,
    start: int,
    stop: int,
    out_path: str | os.PathLike,
    progress: bool = True,
) -> None:
    """Simulate particles ``[start, stop)`` of a dataset into one HDF5 file, atomically.

    Args:
        densities: one (n, n, n) map per structure of ``plan.structure_names``, on the
            simulation grid, origin at voxel n // 2.
        plan, settings: the dataset.
        start, stop: particle index range.
        out_path: the shard file (a complete dataset file when the range is everything).
        progress: show a progress bar on stderr.
    """
    n = settings.box_voxels
    if len(densities) != len(plan.structure_names):
        raise TomosiftError(
            f"{out_path}: {len(densities)} density maps for {len(plan.structure_names)} structures"
        )
    for name, volume in zip(plan.structure_names, densities, strict=True):
        if volume.shape != (n, n, n):
            raise TomosiftError(f"{name}: map of shape {volume.shape}, expected ({n}, {n}, {n})")
        if not np.all(np.isfinite(volume)):
            raise TomosiftError(f"{name}: the map contains NaN or infinite values")
    if not 0 <= start < stop <= plan.n_particles:
        raise TomosiftError(f"{out_path}: particle range [{start}, {stop}) outside the dataset")
    geometry = TiltSeriesGeometry(settings)
    spectra = [padded_spectrum(v, settings.pad_factor) for v in densities]
    empty_sigma = empty_noise_sigma(geometry, spectra, plan.snr)
    key = dataset_key(plan.snr, settings.tilt_max_deg)
    count = stop - start
    dtype = np.dtype(plan.volume_dtype)
    labels = np.arange(start, stop) // plan.per_class
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        volumes = h5.create_dataset(
            "volumes", shape=(count, n, n, n), dtype=dtype, chunks=(1, n, n, n), track_times=False
        )
        rotations = np.zeros((count, 3, 3))
        shifts = np.zeros((count, 3))
        signal_variance = np.zeros(count)
        noise_sigma = np.zeros(count)
        split = np.empty(count, dtype="S5")
        test_flags = {label: plan.is_test(label) for label in np.unique(labels)}
        bar = tqdm(range(start, stop), desc=Path(out_path).name, unit="subtomo",
                   disable=not progress, mininterval=2.0)
        for offset, index in enumerate(bar):
            label = int(labels[offset])
            rotation, shift = random_pose(pose_rng(plan.seed, index), plan.max_shift_voxels)
            is_empty = label >= len(plan.structure_names)
            volume, variance, sigma = geometry.particle(
                None if is_empty else spectra[label], rotation, shift, plan.snr,
                noise_rng(plan.seed, key, index), empty_noise_sigma=empty_sigma,
            )
            volumes[offset] = volume.astype(dtype)
            rotations[offset], shifts[offset] = rotation, shift
            signal_variance[offset], noise_sigma[offset] = variance, sigma
            split[offset] = b"test" if test_flags[label][index % plan.per_class] else b"train"
        for name, values in (("labels", labels.astype(np.int16)), ("rotations", rotations),
                             ("shifts_voxels", shifts), ("split", split),
                             ("signal_variance", signal_variance), ("noise_sigma", noise_sigma)):
            h5.create_dataset(name, data=values, track_times=False)
        h5.create_dataset("class_names", data=plan.class_names,
                          dtype=h5py.string_dtype("utf-8"), track_times=False)
        for attr, value in settings_attributes(settings, plan).items():
            h5.attrs[attr] = value
        h5.attrs["noise_gain"] = geometry.noise_gain
        h5.attrs["empty_noise_sigma"] = empty_sigma
        h5.attrs["index_start"] = start
        h5.attrs["index_stop"] = stop


def empty_noise_sigma(geometry: TiltSeriesGeometry, spectra: Sequence[np.ndarray], snr: float):
    """Projection noise sigma of the empty class: the dataset's mean noise variance.

    Each class's variance is that of its noise-free reconstruction in the reference pose
    (identity, no shift), so every shard computes the same value.
    """
    variances = [
        geometry.clean_particle(spectrum, np.eye(3), np.zeros(3)).var(dtype=np.float64)
        for spectrum in spectra
    ]
    return float(np.sqrt(np.mean(variances) / (snr * geometry.noise_gain)))


@dataclass
class _Shard:
    path: Path
    attrs: dict
    volume_shape: tuple[int, ...]
    volume_dtype: np.dtype
    arrays: dict[str, np.ndarray]
    class_names: list[str]

    @property
    def start(self) -> int:
        return int(self.attrs["index_start"])

    @property
    def stop(self) -> int:
        return int(self.attrs["index_stop"])

    @property
    def parameters(self) -> dict:
        return {k: v for k, v in self.attrs.items() if not k.startswith("index_")}


def _read_shard(path: Path) -> _Shard:
    if not path.is_file():
        raise TomosiftError(f"{path}: shard file not found")
    with open_dataset(path) as h5:
        return _Shard(path, dict(h5.attrs), h5["volumes"].shape, h5["volumes"].dtype,
                      {name: h5[name][()] for name in PER_PARTICLE_ARRAYS}, class_names_of(h5))


def join_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> None:
    """Join shard files into one dataset file without copying the volumes (virtual dataset).

    The shards must cover ``[0, N)`` contiguously and share every attribute but the index
    range. Their paths are stored relative to the joined file, so the folder can be moved.
    """
    out_path = Path(out_path)
    shards = sorted((_read_shard(Path(p)) for p in shard_paths), key=lambda shard: shard.start)
    first = shards[0]
    expected = 0
    for shard in shards:
        if shard.start != expected:
            raise TomosiftError(f"{shard.path}: shard starts at {shard.start}, expected {expected}")
        expected = shard.stop
        if (not _same_attributes(shard.parameters, first.parameters)
                or shard.class_names != first.class_names):
            raise TomosiftError(f"{shard.path}: shard parameters differ from those of {first.path}")
    if expected != int(first.attrs["n_particles"]):
        raise TomosiftError(
            f"{out_path}: shards cover {expected} of {first.attrs['n_particles']} particles"
        )
    layout = _UntimedLayout(shape=(expected, *first.volume_shape[1:]), dtype=first.volume_dtype)
    for shard in shards:
        relative = os.path.relpath(shard.path.resolve(), out_path.resolve().parent)
        layout[shard.start : shard.stop] = h5py.VirtualSource(
            relative, "volumes", shape=shard.volume_shape
        )
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        h5.create_virtual_dataset("volumes", layout)
        for name in PER_PARTICLE_ARRAYS:
            h5.create_dataset(name, data=np.concatenate([s.arrays[name] for s in shards]),
                              track_times=False)
        h5.create_dataset("class_names", data=first.class_names,
                          dtype=h5py.string_dtype("utf-8"), track_times=False)
        for key, value in first.parameters.items():
            h5.attrs[key] = value
        h5.attrs["index_start"] = 0
        h5.attrs["index_stop"] = expected
        h5.attrs["shards"] = len(shards)


class _UntimedLayout(h5py.VirtualLayout):
    """A virtual layout whose dataset carries no creation time (same config, same bytes)."""

    def _get_dcpl(self, dst_filename):  # h5py builds the creation property list here
        dcpl = super()._get_dcpl(dst_filename)
        dcpl.set_obj_track_times(False)
        return dcpl


def _same_attributes(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def open_dataset(path: str | os.PathLike) -> h5py.File:
    """Open a dataset file for reading (from any working directory), checking the contract."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise TomosiftError(f"{path}: not an HDF5 file ({exc})") from exc
    missing = [n for n in ("volumes", "class_names", *PER_PARTICLE_ARRAYS) if n not in h5]
    if missing:
        h5.close()
        raise TomosiftError(f"{path}: not a tomosift dataset (missing {', '.join(missing)})")
    return h5


def class_names_of(h5: h5py.File) -> list[str]:
    return [c.decode() if isinstance(c, bytes) else str(c) for c in h5["class_names"][()]]


def dataset_summary(path: str | os.PathLike) -> str:
    """A human-readable summary of a dataset file (``tomosift show``)."""
    with open_dataset(path) as h5:
        names = class_names_of(h5)
        labels = h5["labels"][()]
        split = h5["split"][()].astype(str)
        volumes = h5["volumes"]
        joined = " (virtual, joined from shards)" if volumes.is_virtual else ""
        lines = [f"{path}", f"  subtomograms: {volumes.shape[0]} of {volumes.shape[1:]} voxels, "
                 f"{volumes.dtype}{joined}"]
        lines.append(f"  split: {int((split == 'train').sum())} train, "
                     f"{int((split == 'test').sum())} test")
        lines.append(f"  classes ({len(names)}):")
        for index, name in enumerate(names):
            lines.append(f"    {index:3d} {name:<20s} {int((labels == index).sum())}")
        lines.append("  parameters:")
        for key in sorted(h5.attrs):
            value = h5.attrs[key]
            if isinstance(value, np.ndarray) and value.size > 6:
                value = f"{value[0]:g} .. {value[-1]:g} ({value.size} values)"
            lines.append(f"    {key}: {value}")
        first = np.asarray(volumes[0], dtype=np.float64)
        lines.append(f"  first volume: mean {first.mean():.4g}, std {first.std():.4g}")
    return "\n".join(lines)


def iter_volumes(h5: h5py.File, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """Yield float32 volumes one at a time (streaming; never loads the dataset)."""
    volumes = h5["volumes"]
    for index in indices:
        yield np.asarray(volumes[int(index)], dtype=np.float32)


def simulate_shard_from_maps(
    map_paths: Sequence[str | os.PathLike], params: dict, out_path: str | os.PathLike
) -> None:
    """Workflow entry: read the class maps and simulate the shard that ``params`` names.

    ``params`` holds the imaging settings (see ``SimulationSettings.from_config``), the
    dataset's ``snr``, ``tilt_max_deg``, ``structure_names``, ``per_class``, ``empty_class``,
    ``max_shift_voxels``, ``test_fraction``, ``volume_dtype``, ``seed``, and the shard's
    ``shard_index`` and ``shard_size``.
    """
    from tomosift.io import read_mrc

    settings = SimulationSettings.from_config(params, params["tilt_max_deg"])
    densities = []
    for path in map_paths:
        volume, voxel_size_nm = read_mrc(path)
        if abs(voxel_size_nm - settings.voxel_size_nm) > 1e-4 * settings.voxel_size_nm:
            raise TomosiftError(
                f"{path}: voxel size {voxel_size_nm:g} nm, the simulation uses "
                f"{settings.voxel_size_nm:g} nm"
            )
        densities.append(volume)
    plan = DatasetPlan(
        structure_names=tuple(params["structure_names"]), per_class=params["per_class"],
        snr=params["snr"], seed=params["seed"], empty_class=params["empty_class"],
        max_shift_voxels=params["max_shift_voxels"], test_fraction=params["test_fraction"],
        volume_dtype=params["volume_dtype"],
    )
    start, stop = plan.shard_ranges(params["shard_size"])[params["shard_index"]]
    simulate_shard(densities, plan, settings, start, stop, out_path)
