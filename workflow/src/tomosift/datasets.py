"""Simulated subtomogram datasets: the HDF5 contract that training and discovery read.

One file per grid point (an SNR or a dose, and a tilt range) holds, at the top level, only
what a classifier may see:

============== ================== ===========================================================
dataset        shape, dtype       meaning
============== ================== ===========================================================
volumes        (N, n, n, n) f4/f2 subtomograms indexed [z, y, x]; one volume per chunk
labels         (N,) int16         class index into ``class_names``
class_names    (C,) str           structure names; the empty class is called ``empty``
split          (N,) bytes         ``train`` or ``test`` (stratified by class, seeded)
============== ================== ===========================================================

and, in the group ``truth/``, the ground truth of every particle, which training, evaluation
and prediction never open (each of these values alone nearly identifies the class):

========================== ============= ======================================================
truth/rotations            (N, 3, 3) f8  pose rotation R (x, y, z): placed as f(R^T(x - t))
truth/shifts_voxels        (N, 3) f8     pose shift t (x, y, z) in voxels
truth/defocus_um           (N,) f8       the particle's defocus (underfocus > 0)
truth/signal_variance      (N,) f8       variance of the noise-free subtomogram over the box
truth/noise_variance       (N,) f8       variance of the noise that was added
truth/snr                  (N,) f8       their ratio: the particle's measured SNR
truth/noise_sigma          (N,) f8       projection noise standard deviation (mean over tilts)
truth/neighbour_labels     (N, K) i2     crowding only: neighbour classes, -1 = none
truth/neighbour_positions_voxels (N, K, 3) f8 crowding only: neighbour centres (x, y, z)
truth/neighbour_rotations  (N, K, 3, 3)  crowding only: neighbour rotations
========================== ============= ======================================================

Datasets of real or simulated tomograms (``tomosift extract``, ``tomosift import-particles``,
see :mod:`tomosift.tomograms`) have no ``truth/`` group but an optional ``particles/`` group:
where each subtomogram came from. Unknown labels are -1 (``class_names`` may then be empty and
every ``split`` value is ``test``); the attribute ``labels_known`` says which case it is, and
``source`` names the input:

=============================== ============= ================================================
particles/tomo_name             (N,) str      the source tomogram's name ('' when unknown)
particles/coordinates_voxels    (N, 3) f8     x, y, z in voxels of that tomogram (NaN: unknown)
particles/tomogram_size_xyz     (N, 3) i8     the tomogram's size in voxels (0: unknown)
particles/angles_deg            (N, 3) f8     RELION rot, tilt, psi (NaN: unknown)
particles/image_name            (N,) str      the source MRC of an imported subtomogram, else ''
particles/centered_angst        (N, 3) f8     RELION 5 centred x, y, z in Å (NaN: unknown)
particles/defocus_um            (N,) f8       optional: mean defocus over the particle's tilts
                                              (underfocus > 0; 2D-stack imports)
fourier_weights                 (N, n, n,     optional, top level, one particle per chunk:
                                n//2+1) f4    summed CTF² x dose weight² of the tilts the
                                              particle was reconstructed from, rfftn layout in
                                              its own (tomogram-aligned) frame, 0 unobserved
=============================== ============= ================================================

with the attribute ``particles.attrs["tomogram_voxel_size_nm"]`` (NaN when unknown). When
``fourier_weights`` is present, the file attribute ``ctf_corrected`` True says the volumes are
already CTF-corrected (Wiener-divided wherever the weight is > 0; see
:mod:`tomosift.tomograms.stacks`).

File attributes record every physical and random parameter (voxel size, box, noise model
with its SNR or dose, tilt range and step, CTF/MTF, ice, crowding, reconstruction mode, seed,
tomosift version, ...) and the measured SNR: ``measured_snr_mean`` (over the non-empty
classes) and ``measured_snr_per_class`` (NaN for the empty class).

Datasets are simulated in shards (independent jobs); a shard file has the same layout for its
index range ``[index_start, index_stop)``. The joined file copies the small per-particle
arrays and maps ``volumes`` onto the shards' volumes through an HDF5 virtual dataset, so
nothing large is copied: **a joined dataset is the joined file plus its ``shards/`` folder**
(paths stored relative to the joined file; copy or move them together). HDF5 reads a missing
source as zeros without a word, so :func:`open_dataset` checks that every shard is there and
refuses with the missing file's name otherwise.

Volumes are the raw reconstructions (no normalisation); their polarity is recorded in the
``polarity`` attribute (``dark``: as the microscope records them with the CTF on; ``white``:
inverted, as RELION expects particles; see ``simulation.polarity``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
from threadpoolctl import threadpool_limits

from tomosift import __version__
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.progress import progress_bar
from tomosift.simulate.dose import contrast_per_voxel_sum, tilt_noise_sigma
from tomosift.simulate.poses import dataset_key, noise_rng, pose_rng, random_pose
from tomosift.simulate.specimen import (
    Crowding,
    Neighbour,
    crowding_reach_voxels,
    place_neighbours,
    solvent_corrected,
    support_radius_voxels,
)
from tomosift.simulate.tomography import (
    SimulationSettings,
    TiltSeriesGeometry,
    padded_spectrum,
    required_signal_box,
)

EMPTY_CLASS = "empty"
TRUTH_GROUP = "truth"
VISIBLE_ARRAYS = ("labels", "split")
TRUTH_ARRAYS = ("rotations", "shifts_voxels", "defocus_um", "signal_variance", "noise_variance",
                "snr", "noise_sigma")
CROWDING_ARRAYS = ("neighbour_labels", "neighbour_positions_voxels", "neighbour_rotations")
NOISE_MODELS = ("snr", "dose")
MEASURED_PREFIX = "measured_"


@dataclass(frozen=True)
class DatasetPlan:
    """What a dataset contains: classes, counts, the noise level and the random choices.

    Particle ``i`` belongs to class ``i // per_class`` of ``class_names`` (the structures in
    config order, then ``empty`` when ``empty_class``). The noise is set either by ``snr``
    (the paper's model: each particle calibrated to this SNR) or by ``dose_e_per_a2`` (the
    detector's: one dose for the whole dataset, total over the tilt series).
    """

    structure_names: tuple[str, ...]
    per_class: int
    snr: float | None = None
    seed: int = 1
    empty_class: bool = True
    max_shift_voxels: float = 4.0
    test_fraction: float = 0.5
    volume_dtype: str = "float32"
    dose_e_per_a2: float | None = None
    crowding: Crowding = field(default_factory=Crowding)

    def __post_init__(self) -> None:
        if not self.structure_names:
            raise TomosiftError("the dataset needs at least one structure")
        if (self.snr is None) == (self.dose_e_per_a2 is None):
            raise TomosiftError("a dataset has either an SNR or a dose, not both or neither")
        if self.snr is not None and self.snr <= 0:
            raise TomosiftError(f"SNR must be > 0, got {self.snr}")
        if self.dose_e_per_a2 is not None and self.dose_e_per_a2 <= 0:
            raise TomosiftError(f"the dose must be > 0 e/Å², got {self.dose_e_per_a2}")
        if self.per_class < 2:
            raise TomosiftError(f"per_class must be >= 2, got {self.per_class}")
        if self.volume_dtype not in ("float32", "float16"):
            raise TomosiftError(f"volume_dtype must be float32 or float16, not {self.volume_dtype}")

    @property
    def noise_model(self) -> str:
        return "snr" if self.snr is not None else "dose"

    @property
    def noise_level(self) -> float:
        """The grid point's SNR or dose."""
        return self.snr if self.snr is not None else self.dose_e_per_a2

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
        return test_flags(self.per_class, self.test_fraction, self.seed, label)

    def noise_key(self, tilt_max_deg: float) -> int:
        """The key of this grid point's noise streams."""
        return dataset_key(self.noise_level, tilt_max_deg, self.noise_model)


def test_flags(count: int, test_fraction: float, seed: int, label: int) -> np.ndarray:
    """(count,) bool: which of the ``count`` members of class ``label`` are in the test split:
    ``round(count * test_fraction)`` of them, chosen by a generator keyed (seed, 2, label)."""
    rng = np.random.default_rng([seed, 2, label])
    flags = np.zeros(count, dtype=bool)
    flags[rng.permutation(count)[: round(count * test_fraction)]] = True
    return flags


def settings_attributes(settings: SimulationSettings, plan: DatasetPlan) -> dict:
    """Flat HDF5 attributes describing a dataset completely."""
    optics = asdict(settings.optics)
    value_range = optics.pop("defocus_range_um")
    attrs = {
        "tomosift_version": __version__,
        "voxel_size_nm": settings.voxel_size_nm,
        "box_voxels": settings.box_voxels,
        "signal_box_voxels": settings.resolved_signal_box_voxels,
        "noise_model": plan.noise_model,
        ("snr" if plan.snr is not None else "dose_e_per_a2"): plan.noise_level,
        "tilt_max_deg": settings.tilt_max_deg,
        "tilt_step_deg": settings.tilt_step_deg,
        "tilt_angles_deg": settings.tilt_angles_deg,
        "reconstruction": settings.reconstruction,
        "noise_stage": "after_ctf" if plan.noise_model == "dose" else settings.noise_stage,
        "pad_factor": settings.pad_factor,
        "seed": plan.seed,
        "per_class": plan.per_class,
        "empty_class": plan.empty_class,
        "max_shift_voxels": plan.max_shift_voxels,
        "test_fraction": plan.test_fraction,
        "volume_dtype": plan.volume_dtype,
        "n_particles": plan.n_particles,
        "polarity": "dark" if settings.dark_particles else "white",
        "units": ("image contrast (weak phase, 2 sigma_e V t) filtered and reconstructed"
                  if plan.noise_model == "dose"
                  else "raw reconstruction of the input density (no normalisation)"),
        "snr_definition": "var(noise-free reconstruction) / var(noise) over the box",
        "ice_thickness_nm": settings.ice.thickness_nm,
        "solvent_contrast": settings.ice.solvent_contrast,
        "inelastic_mfp_nm": settings.ice.inelastic_mfp_nm,
        "max_neighbours": plan.crowding.max_neighbours,
        "neighbour_gap_nm": [plan.crowding.min_gap_nm, plan.crowding.max_gap_nm],
    }
    if value_range is not None:
        attrs["defocus_range_um"] = list(value_range)
    attrs.update(optics)
    return attrs


@dataclass
class _Classes:
    """The class maps of a dataset, prepared once per shard."""

    spectra: list[np.ndarray]
    radii_voxels: np.ndarray


def _prepare_classes(densities: Sequence[np.ndarray], plan: DatasetPlan,
                     settings: SimulationSettings, out_path) -> _Classes:
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
    radii = np.array([support_radius_voxels(v) for v in densities])
    spectra = [padded_spectrum(solvent_corrected(v, settings.ice.solvent_contrast),
                               settings.pad_factor) for v in densities]
    return _Classes(spectra, radii)


def signal_box_for(settings: SimulationSettings, plan: DatasetPlan,
                   radii_voxels: np.ndarray) -> int:
    """The signal box in which no particle of the dataset can wrap around (see
    :func:`tomosift.simulate.tomography.required_signal_box`)."""
    reach = plan.max_shift_voxels + float(radii_voxels.max())
    if plan.crowding.max_neighbours:
        reach = max(reach, crowding_reach_voxels(settings.box_voxels, float(radii_voxels.max())))
    return required_signal_box(settings.box_voxels, reach)


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
        plan, settings: the dataset (``settings.signal_box_voxels`` is chosen here).
        start, stop: particle index range.
        out_path: the shard file (a complete dataset file when the range is everything).
        progress: report progress on stderr (a bar on a terminal, lines in a log).
    """
    with threadpool_limits(limits=1):  # one core per shard; BLAS threads only slow it down
        _simulate_shard(densities, plan, settings, start, stop, Path(out_path), progress)


def _simulate_shard(densities, plan: DatasetPlan, settings: SimulationSettings, start: int,
                    stop: int, out_path: Path, progress: bool) -> None:
    n = settings.box_voxels
    if not 0 <= start < stop <= plan.n_particles:
        raise TomosiftError(f"{out_path}: particle range [{start}, {stop}) outside the dataset")
    simulator = ParticleSimulator.prepare(densities, plan, settings, out_path)
    geometry, classes, settings = simulator.geometry, simulator.classes, simulator.settings
    count = stop - start
    dtype = np.dtype(plan.volume_dtype)
    labels = np.arange(start, stop) // plan.per_class
    truth = {name: np.zeros(count) for name in TRUTH_ARRAYS}
    truth["rotations"] = np.zeros((count, 3, 3))
    truth["shifts_voxels"] = np.zeros((count, 3))
    k = plan.crowding.max_neighbours
    if k:
        truth["neighbour_labels"] = np.full((count, k), -1, dtype=np.int16)
        truth["neighbour_positions_voxels"] = np.full((count, k, 3), np.nan)
        truth["neighbour_rotations"] = np.full((count, k, 3, 3), np.nan)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        volumes = h5.create_dataset(
            "volumes", shape=(count, n, n, n), dtype=dtype, chunks=(1, n, n, n), track_times=False
        )
        split = np.empty(count, dtype="S5")
        test_flags = {label: plan.is_test(label) for label in np.unique(labels)}
        bar = progress_bar(range(start, stop), desc=Path(out_path).name, unit="subtomo",
                           enabled=progress)
        for offset, index in enumerate(bar):
            label = int(labels[offset])
            volume, record, neighbours = simulator.particle(index, label)
            volumes[offset] = volume.astype(dtype)
            for name, value in record.items():
                truth[name][offset] = value
            for j, neighbour in enumerate(neighbours):
                truth["neighbour_labels"][offset, j] = neighbour.label
                truth["neighbour_positions_voxels"][offset, j] = neighbour.position_voxels
                truth["neighbour_rotations"][offset, j] = neighbour.rotation
            split[offset] = b"test" if test_flags[label][index % plan.per_class] else b"train"
        h5.create_dataset("labels", data=labels.astype(np.int16), track_times=False)
        h5.create_dataset("split", data=split, track_times=False)
        _write_class_names(h5, plan.class_names)
        group = h5.create_group(TRUTH_GROUP, track_order=False)
        for name, values in truth.items():
            group.create_dataset(name, data=values, track_times=False)
        for attr, value in settings_attributes(settings, plan).items():
            h5.attrs[attr] = value
        h5.attrs["noise_gain"] = geometry.noise_gain
        h5.attrs["class_radius_voxels"] = classes.radii_voxels
        if plan.noise_model == "snr":
            h5.attrs["empty_noise_sigma"] = simulator.empty_sigma
        else:
            h5.attrs["noise_sigma_per_tilt"] = simulator.tilt_sigma
        h5.attrs["index_start"] = start
        h5.attrs["index_stop"] = stop
        _write_measured_snr(h5, labels, truth["snr"], len(plan.class_names),
                            len(plan.structure_names))


class ParticleSimulator:
    """One particle at a time: its pose, defocus and neighbours from its pose stream, its
    noise from its noise stream, at the grid point's noise level."""

    def __init__(self, geometry: TiltSeriesGeometry, classes: _Classes, plan: DatasetPlan):
        self.geometry = geometry
        self.settings = settings = geometry.settings
        self.classes = classes
        self.plan = plan
        self.key = plan.noise_key(settings.tilt_max_deg)
        self.n_structures = len(plan.structure_names)
        if plan.noise_model == "snr":
            self.empty_sigma = empty_noise_sigma(geometry, classes.spectra, plan.snr)
            self.tilt_sigma = None
        else:
            self.tilt_sigma = tilt_noise_sigma(plan.dose_e_per_a2, settings.tilt_angles_deg,
                                               settings.voxel_size_nm, settings.ice)
            self.contrast_scale = np.float32(contrast_per_voxel_sum(
                settings.optics.voltage_kv, settings.voxel_size_nm))

    @classmethod
    def prepare(cls, densities: Sequence[np.ndarray], plan: DatasetPlan,
                settings: SimulationSettings, name: str | os.PathLike = "dataset"):
        """Check the class maps, choose the signal box and set up the geometry."""
        classes = _prepare_classes(densities, plan, settings, name)
        settings = replace(settings,
                           signal_box_voxels=signal_box_for(settings, plan, classes.radii_voxels))
        if plan.noise_model == "dose":
            settings = replace(settings, noise_stage="after_ctf")  # shot noise: after the CTF
        return cls(TiltSeriesGeometry(settings), classes, plan)

    def with_plan(self, plan: DatasetPlan) -> ParticleSimulator:
        """The same geometry and classes at another grid point's noise level."""
        return ParticleSimulator(self.geometry, self.classes, plan)

    def particle(self, index: int, label: int) -> tuple[np.ndarray, dict, list[Neighbour]]:
        """Particle ``index`` of class ``label``: (volume (n, n, n) float32, its values of the
        ``truth/`` arrays of :data:`TRUTH_ARRAYS`, its neighbours)."""
        plan, settings, geometry = self.plan, self.settings, self.geometry
        stream = pose_rng(plan.seed, index)
        rotation, shift = random_pose(stream, plan.max_shift_voxels)
        value_range = settings.optics.defocus_range_um
        defocus = float(stream.uniform(*value_range)) if value_range else None
        neighbours = []
        if plan.crowding.max_neighbours:
            neighbours = place_neighbours(stream, label, shift, self.classes.radii_voxels,
                                          settings.box_voxels, settings.voxel_size_nm,
                                          plan.crowding)
        placements = [(self.classes.spectra[nb.label], nb.rotation, nb.position_voxels)
                      for nb in neighbours]
        is_empty = label >= self.n_structures
        if not is_empty:
            placements.insert(0, (self.classes.spectra[label], rotation, shift))
        noise = geometry.unit_noise(noise_rng(plan.seed, self.key, index), defocus,
                                    self.tilt_sigma)
        signal = geometry.clean_signal(placements, defocus)
        if plan.noise_model == "snr":
            sigma = (self.empty_sigma if is_empty else
                     geometry.noise_sigma(float(signal.var(dtype=np.float64)), plan.snr, defocus))
            noise *= np.float32(sigma)
        else:
            signal *= self.contrast_scale
            sigma = float(self.tilt_sigma.mean())
        volume = signal + noise
        if not settings.dark_particles and settings.optics.ctf_enabled:
            volume = -volume
        signal_variance = float(signal.var(dtype=np.float64))
        noise_variance = float(noise.var(dtype=np.float64))
        return volume, {
            "rotations": rotation, "shifts_voxels": shift,
            "defocus_um": settings.optics.defocus_um if defocus is None else defocus,
            "signal_variance": signal_variance, "noise_variance": noise_variance,
            "snr": signal_variance / noise_variance, "noise_sigma": sigma,
        }, neighbours


def _write_class_names(h5: h5py.File, names: Sequence[str]) -> None:
    h5.create_dataset("class_names", data=list(names), dtype=h5py.string_dtype("utf-8"),
                      track_times=False)


def _write_measured_snr(h5: h5py.File, labels: np.ndarray, snr: np.ndarray, n_classes: int,
                        n_structures: int) -> None:
    """Attributes ``measured_snr_per_class`` (NaN where a class is absent or empty) and
    ``measured_snr_mean`` (mean over the particles of the structure classes)."""
    per_class = np.full(n_classes, np.nan)
    for label in range(n_structures):
        chosen = labels == label
        if chosen.any():
            per_class[label] = float(snr[chosen].mean())
    structures = labels < n_structures
    h5.attrs[f"{MEASURED_PREFIX}snr_per_class"] = per_class
    h5.attrs[f"{MEASURED_PREFIX}snr_mean"] = (float(snr[structures].mean()) if structures.any()
                                              else float("nan"))


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
    truth: dict[str, np.ndarray]
    class_names: list[str]

    @property
    def start(self) -> int:
        return int(self.attrs["index_start"])

    @property
    def stop(self) -> int:
        return int(self.attrs["index_stop"])

    @property
    def parameters(self) -> dict:
        """The attributes every shard of a dataset shares."""
        return {k: v for k, v in self.attrs.items()
                if not k.startswith(("index_", MEASURED_PREFIX))}


def _read_shard(path: Path) -> _Shard:
    if not path.is_file():
        raise TomosiftError(f"{path}: shard file not found")
    with open_dataset(path) as h5:
        return _Shard(path, dict(h5.attrs), h5["volumes"].shape, h5["volumes"].dtype,
                      {name: h5[name][()] for name in VISIBLE_ARRAYS},
                      read_truth(h5), class_names_of(h5))


def join_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> None:
    """Join shard files into one dataset file without copying the volumes (virtual dataset).

    The shards must cover ``[0, N)`` contiguously and share every attribute but the index
    range and the measured SNR (recomputed over the whole dataset). Their paths are stored
    relative to the joined file, so the folder can be moved as a whole.
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
    layout = UntimedLayout(shape=(expected, *first.volume_shape[1:]), dtype=first.volume_dtype)
    for shard in shards:
        relative = os.path.relpath(shard.path.resolve(), out_path.resolve().parent)
        layout[shard.start : shard.stop] = h5py.VirtualSource(
            relative, "volumes", shape=shard.volume_shape
        )
    labels = np.concatenate([s.arrays["labels"] for s in shards])
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", track_order=False) as h5:
        h5.create_virtual_dataset("volumes", layout)
        for name in VISIBLE_ARRAYS:
            h5.create_dataset(name, data=np.concatenate([s.arrays[name] for s in shards]),
                              track_times=False)
        _write_class_names(h5, first.class_names)
        group = h5.create_group(TRUTH_GROUP, track_order=False)
        for name in first.truth:
            group.create_dataset(name, data=np.concatenate([s.truth[name] for s in shards]),
                                 track_times=False)
        for key, value in first.parameters.items():
            h5.attrs[key] = value
        h5.attrs["index_start"] = 0
        h5.attrs["index_stop"] = expected
        h5.attrs["shards"] = len(shards)
        n_structures = len(first.class_names) - int(bool(first.attrs["empty_class"]))
        _write_measured_snr(h5, labels, group["snr"][()], len(first.class_names), n_structures)


class UntimedLayout(h5py.VirtualLayout):
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
    """Open a dataset file for reading (from any working directory), checking the contract.

    A joined file's volumes live in its shard files: each must exist, else the error names
    the first missing one (HDF5 itself would read its volumes as zeros).
    """
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise TomosiftError(f"{path}: not an HDF5 file ({exc})") from exc
    missing = [n for n in ("volumes", "class_names", *VISIBLE_ARRAYS) if n not in h5]
    if missing:
        h5.close()
        raise TomosiftError(f"{path}: not a tomosift dataset (missing {', '.join(missing)})")
    volumes = h5["volumes"]
    if volumes.is_virtual:
        for source in volumes.virtual_sources():
            shard = Path(source.file_name)
            if not shard.is_absolute():
                shard = path.parent / shard
            if not shard.is_file():
                h5.close()
                raise TomosiftError(f"{path}: its volumes are stored in {shard}, which is "
                                    "missing (a joined dataset needs its shards/ folder beside it)")
    return h5


def class_names_of(h5: h5py.File) -> list[str]:
    return [c.decode() if isinstance(c, bytes) else str(c) for c in h5["class_names"][()]]


def read_truth(h5: h5py.File) -> dict[str, np.ndarray]:
    """Every ground-truth array of an open dataset file (the ``truth/`` group).

    For reports, benchmarks and discovery scoring; classifiers never read it.
    """
    if TRUTH_GROUP not in h5:
        raise TomosiftError(f"{h5.filename}: no '{TRUTH_GROUP}' group (not a simulated dataset)")
    return {name: h5[TRUTH_GROUP][name][()] for name in h5[TRUTH_GROUP]}


def measured_snr_table(h5: h5py.File) -> list[tuple[str, int, float]]:
    """(class name, particles, mean measured SNR) per class of an open dataset file."""
    names = class_names_of(h5)
    labels = h5["labels"][()]
    snr = h5[TRUTH_GROUP]["snr"][()]
    return [(name, int((labels == i).sum()),
             float(snr[labels == i].mean()) if (labels == i).any() else float("nan"))
            for i, name in enumerate(names)]


def dataset_summary(path: str | os.PathLike) -> str:
    """A human-readable summary of a dataset file (``tomosift show``)."""
    with open_dataset(path) as h5:
        names = class_names_of(h5)
        split = h5["split"][()].astype(str)
        volumes = h5["volumes"]
        joined = " (virtual, joined from shards)" if volumes.is_virtual else ""
        lines = [f"{path}", f"  subtomograms: {volumes.shape[0]} of {volumes.shape[1:]} voxels, "
                 f"{volumes.dtype}{joined}"]
        lines.append(f"  split: {int((split == 'train').sum())} train, "
                     f"{int((split == 'test').sum())} test")
        measured = h5.attrs.get(f"{MEASURED_PREFIX}snr_mean")
        if measured is not None:
            lines.append(f"  measured SNR (mean over the structure classes): {measured:.4g}")
        lines.append(f"  classes ({len(names)}):  count  measured SNR")
        table = (measured_snr_table(h5) if TRUTH_GROUP in h5
                 else [(name, int((h5["labels"][()] == i).sum()), float("nan"))
                       for i, name in enumerate(names)])
        for index, (name, count, snr) in enumerate(table):
            snr_text = "" if name == EMPTY_CLASS or np.isnan(snr) else f"{snr:.4g}"
            lines.append(f"    {index:3d} {name:<20s} {count:5d}  {snr_text}")
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


def grid_point_tag(noise_model: str, noise_level: float, tilt_max_deg: float) -> str:
    """The name of a grid point's dataset: ``snr0.1_tilt60`` or ``dose100_tilt60``."""
    return f"{noise_model}{float(noise_level):g}_tilt{float(tilt_max_deg):g}"


def grid_points(config: dict) -> dict[str, tuple[float, float]]:
    """Every (noise level, tilt range) of a validated workflow config, by dataset tag; the
    noise level is an SNR or a dose (``simulation.noise_model``)."""
    simulation = config["simulation"]
    model = simulation["noise_model"]
    levels = simulation["snr"] if model == "snr" else simulation["dose_e_per_a2"]
    return {grid_point_tag(model, level, tilt): (float(level), float(tilt))
            for tilt in simulation["tilt_max_deg"] for level in levels}


def imaging_params(config: dict) -> dict:
    """The imaging settings of a validated workflow config that every grid point shares (the
    tilt range is set per dataset); see :meth:`SimulationSettings.from_config`."""
    simulation = config["simulation"]
    return {
        "box_voxels": config["box_voxels"],
        "voxel_size_nm": config["voxel_size_nm"],
        **{key: simulation[key] for key in ("tilt_step_deg", "reconstruction", "noise_stage",
                                            "pad_factor", "ctf", "mtf", "ice", "polarity")},
    }


def simulation_params(config: dict, structure_names: Sequence[str], noise_level: float,
                      tilt_max_deg: float) -> dict:
    """Everything that defines one grid point's dataset (without the shard), from a validated
    workflow config: the input of :func:`simulate_shard_from_maps`."""
    simulation = config["simulation"]
    level_key = "snr" if simulation["noise_model"] == "snr" else "dose_e_per_a2"
    return {
        level_key: float(noise_level),
        "tilt_max_deg": float(tilt_max_deg),
        "structure_names": list(structure_names),
        **imaging_params(config),
        **{key: simulation[key] for key in ("per_class", "empty_class", "max_shift_voxels",
                                            "test_fraction", "volume_dtype", "crowding")},
        "seed": config["seed"],
    }


def plan_from_params(params: dict) -> DatasetPlan:
    """The dataset plan of the workflow's simulation parameters (see ``simulation_params`` in
    ``workflow/rules/common.smk``)."""
    crowding = params.get("crowding", {})
    return DatasetPlan(
        structure_names=tuple(params["structure_names"]), per_class=params["per_class"],
        snr=params.get("snr"), dose_e_per_a2=params.get("dose_e_per_a2"),
        seed=params["seed"], empty_class=params["empty_class"],
        max_shift_voxels=params["max_shift_voxels"], test_fraction=params["test_fraction"],
        volume_dtype=params["volume_dtype"], crowding=Crowding(**crowding),
    )


def simulate_shard_from_maps(
    map_paths: Sequence[str | os.PathLike], params: dict, out_path: str | os.PathLike
) -> None:
    """Workflow entry: read the class maps and simulate the shard that ``params`` names.

    ``params`` holds the imaging settings (see ``SimulationSettings.from_config``), the
    dataset's ``snr`` or ``dose_e_per_a2``, ``tilt_max_deg``, ``structure_names``,
    ``per_class``, ``empty_class``, ``max_shift_voxels``, ``test_fraction``, ``volume_dtype``,
    ``crowding``, ``seed``, and the shard's ``shard_index`` and ``shard_size``.
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
    plan = plan_from_params(params)
    start, stop = plan.shard_ranges(params["shard_size"])[params["shard_index"]]
    simulate_shard(densities, plan, settings, start, stop, out_path)


def simulate_in_memory(densities: Sequence[np.ndarray], plan: DatasetPlan,
                       settings: SimulationSettings, indices: Sequence[int] | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Particles of a dataset without a file: (volumes (N, n, n, n) float32, the ``truth/``
    arrays of :data:`TRUTH_ARRAYS` for them), for small experiments and tests. The same
    particles, bit for bit, as :func:`simulate_shard` writes for ``indices`` (default all)."""
    simulator = ParticleSimulator.prepare(densities, plan, settings)
    indices = range(plan.n_particles) if indices is None else indices
    volumes, records = [], []
    with threadpool_limits(limits=1):
        for index in indices:
            volume, record, _ = simulator.particle(int(index), int(index) // plan.per_class)
            volumes.append(volume)
            records.append(record)
    truth = {name: np.stack([np.asarray(r[name]) for r in records]) for name in TRUTH_ARRAYS}
    return np.stack(volumes).astype(np.float32), truth
