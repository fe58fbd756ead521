"""Simulated crowded tomograms: the ground truth for picking, extraction and subdivision.

Randomly rotated particles of several classes are placed without overlap in one large volume
and imaged with the same tilt series, CTF, MTF, detector noise and missing wedge as the
subtomogram simulator (:mod:`tomosift.simulate.tomography`, :mod:`tomosift.simulate.dose`).

How it is computed (measured choices):

* **One Fourier box for the whole tomogram.** The geometry is
  ``TiltSeriesGeometry(replace(settings, box_voxels=N, signal_box_voxels=N))``: an N³ box
  (N even). Each class's ``padded_spectrum(map, pad_factor)`` (the n³ map padded to
  ``pad_factor * n``, as for subtomograms) is sampled at the tomogram's slice frequencies for
  every particle, ``(spectrum, R, position - N // 2)``, summed, filtered by CTF x MTF once and
  reconstructed once: the subtomogram simulator's own code path
  (``_FourierGrid.sample``). Padding the map to N instead of ``2n`` was measured (N = 128,
  no CTF): the density more than 30 voxels from a particle is the same (max 3.7% of its peak
  without, 7.4% with a ±60° wedge: the wedge's streaks, not interpolation ghosts), so the
  small spectrum is kept.
* **Faces.** The box is periodic (signal and noise wrap across its faces), so every
  particle's support sphere (:func:`tomosift.simulate.specimen.support_radius_voxels`) is
  kept :data:`FACE_MARGIN_VOXELS` inside the output volume.
* **Slab.** With ``thickness_voxels`` Z < N the particles are placed in the central Z planes
  of the N³ box only, and the reconstruction is cropped to (Z, N, N) [z, y, x]: a thin
  specimen, whose missing-wedge streaks leave through the cut faces as in a real tomogram.
* **Placement** (:func:`place_particles`): a class drawn uniformly, a position uniform in the
  allowed region by rejection sampling, a rotation uniform on SO(3); two particles keep their
  centres at least ``r_i + r_j + min_gap`` apart.
* **Noise.** ``dose_e_per_a2``: the detector model of :mod:`tomosift.simulate.dose` (signal
  scaled to image contrast, noise of ``tilt_noise_sigma`` per projection added after the CTF
  and filtered by the MTF), the same per-voxel noise as a subtomogram of that dose. ``snr``:
  the projection noise sigma is set so that the mean over particles of var(signal) /
  var(noise) in the n³ box (the maps' size) centred on each particle equals ``snr``; noise is
  added at ``settings.noise_stage`` and its variance measured on this tomogram's own noise.
* **Defocus and polarity:** the optics' nominal defocus for the whole tomogram (every tilt,
  no defocus gradient; ``defocus_range_um`` is not used here); polarity as
  ``settings.polarity`` (``recorded``: particles dark with the CTF on; ``white``: inverted).
  :func:`write_tomogram` records the CTF (defocus, voltage, Cs, amplitude contrast) in the
  MRC header's labels and in the truth STAR (``rlnDefocusU/V`` in Å per particle, the optics
  block's ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``), where
  ``tomosift pick`` finds it for its CTF correction.
* **A large box and the ``fourier`` reconstruction.** Gridding with normalised weights leaves
  voxels empty where neighbouring slices are more than a voxel apart, beyond the radius
  1 / dtheta in index units (28 at 2° steps); in an N-box that radius is a lower physical
  frequency than in a 40³ box. Measured (2° steps, MTF off), the per-voxel variance of
  reconstructed unit projection noise is 0.0076 in a 40³ box, 0.0049 at 96³ and 0.0030 at
  128³, so at one dose the tomogram's voxels are less noisy than the subtomogram simulator's
  (the signal loses the same frequencies; a lone particle's 40³ box cut from a 96³ tomogram
  correlates 0.98 with the simulator's particle at 4° steps). ``wbp`` does not depend on the
  box (0.0067, 0.0063, 0.0063), as a real tomogram's weighted back-projection.

Speed (one core): the per-particle sampling costs O(number of slice samples) = O(T N²)
whatever the particle's size; see :func:`simulate_tomogram` for measured times.

Positions are x, y, z voxel coordinates of the output volume (voxel i covers [i - 0.5,
i + 0.5], as in :mod:`tomosift.tomograms.relion`); a particle with rotation R at position p is
the map placed as ``f(R^T (x - p))``, so its RELION angles are ``relion_angles(R.T)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.transform import Rotation

from tomosift.errors import TomosiftError
from tomosift.progress import progress_bar
from tomosift.simulate.ctf import Optics
from tomosift.simulate.dose import contrast_per_voxel_sum, tilt_noise_sigma
from tomosift.simulate.specimen import solvent_corrected, support_radius_voxels
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum

#: Every particle's support sphere stays this far inside the output volume's faces (the box
#: is periodic, and gridding spreads density a few voxels).
FACE_MARGIN_VOXELS = 4.0
#: Candidate positions tried per particle before the packing is declared impossible.
PLACEMENT_ATTEMPTS = 2000
_CANDIDATE_BATCH = 64
_PLACEMENT_STREAM, _ROTATION_STREAM, _NOISE_STREAM = 0, 1, 2


@dataclass(frozen=True)
class TomogramPlan:
    """What to simulate: the tomogram's size, its particles and its noise.

    Attributes:
        size_voxels: N, the x and y extent and the edge of the (cubic) Fourier box; even.
        thickness_voxels: z extent Z of the output (a central slab of the box); None = N.
        n_particles: particles to place (0 = noise only, dose mode).
        min_gap_nm: smallest distance between two particles' support spheres.
        dose_e_per_a2: total dose over the tilt series (detector noise); or None.
        snr: target mean SNR of the particles' subtomograms; or None. Exactly one of
            ``dose_e_per_a2`` and ``snr`` is set.
        seed: seeds placement, rotations and noise.
    """

    size_voxels: int = 256
    thickness_voxels: int | None = None
    n_particles: int = 300
    min_gap_nm: float = 2.0
    dose_e_per_a2: float | None = 100.0
    snr: float | None = None
    seed: int = 1

    def __post_init__(self) -> None:
        if self.size_voxels < 16 or self.size_voxels % 2:
            raise TomosiftError(f"the tomogram size must be even and >= 16 voxels, "
                                f"got {self.size_voxels}")
        if self.thickness_voxels is not None and not 0 < self.thickness_voxels <= self.size_voxels:
            raise TomosiftError(f"the thickness must be in [1, {self.size_voxels}] voxels, "
                                f"got {self.thickness_voxels}")
        if self.n_particles < 0:
            raise TomosiftError(f"the particle count must be >= 0, got {self.n_particles}")
        if self.min_gap_nm < 0:
            raise TomosiftError(f"min_gap_nm must be >= 0, got {self.min_gap_nm:g}")
        if (self.dose_e_per_a2 is None) == (self.snr is None):
            raise TomosiftError("give exactly one of a dose and an SNR (set dose_e_per_a2=None "
                                "to use snr)")
        if self.dose_e_per_a2 is not None and self.dose_e_per_a2 <= 0:
            raise TomosiftError(f"the dose must be > 0 e/Å², got {self.dose_e_per_a2:g}")
        if self.snr is not None and self.snr <= 0:
            raise TomosiftError(f"the SNR must be > 0, got {self.snr:g}")
        if self.snr is not None and self.n_particles == 0:
            raise TomosiftError("an SNR needs particles to calibrate the noise against")

    @property
    def resolved_thickness_voxels(self) -> int:
        return self.size_voxels if self.thickness_voxels is None else self.thickness_voxels


@dataclass
class SimulatedTomogram:
    """A simulated tomogram and its ground truth.

    Attributes:
        volume: (Z, Y, X) float32 tomogram.
        voxel_size_nm: its voxel edge.
        class_names: (C,) structure names.
        labels: (P,) int64 class index of each particle.
        positions_voxels: (P, 3) x, y, z voxel coordinates of the particles in ``volume``.
        rotations: (P, 3, 3) R: a particle is the map placed as f(R^T (x - t)).
        radii_voxels: (C,) support radius of each class.
        noise_sigma: projection noise standard deviation (mean over the tilts; in contrast
            units for a dose, in the map's density units for an SNR).
        optics: the microscope's optics (its ``defocus_um`` for every tilt); None when the
            CTF was off.
    """

    volume: np.ndarray
    voxel_size_nm: float
    class_names: list[str]
    labels: np.ndarray
    positions_voxels: np.ndarray
    rotations: np.ndarray
    radii_voxels: np.ndarray
    noise_sigma: float = 0.0
    optics: Optics | None = None

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """(X, Y, Z) extent of the volume in voxels."""
        z, y, x = self.volume.shape
        return x, y, z


def place_particles(
    rng: np.random.Generator,
    radii_voxels: np.ndarray,
    size_xyz: Sequence[float],
    n_particles: int,
    min_gap_voxels: float,
    margin_voxels: float,
    weights: np.ndarray | None = None,
    attempts: int = PLACEMENT_ATTEMPTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping particle centres by rejection sampling.

    Each particle draws its class (uniformly, or by ``weights``), then positions uniform in
    the region where its support sphere is ``margin_voxels`` inside the volume, until one is
    at least ``r_i + r_j + min_gap_voxels`` from every particle placed so far.

    Args:
        rng: the placement stream.
        radii_voxels: (C,) support radius per class.
        size_xyz: (3,) the volume's extent x, y, z in voxels (voxel centres 0 .. size - 1).
        n_particles: how many to place.
        min_gap_voxels: gap between support spheres.
        margin_voxels: gap between a support sphere and the volume's faces.
        weights: (C,) class probabilities (normalised here); None = uniform.
        attempts: candidate positions per particle before giving up.

    Returns:
        (labels (P,) int64, positions (P, 3) float64 x, y, z voxels).

    Raises:
        TomosiftError: when a particle finds no free place, saying how many fit.
    """
    radii = np.asarray(radii_voxels, dtype=np.float64)
    size = np.asarray(size_xyz, dtype=np.float64)
    probabilities = None
    if weights is not None:
        probabilities = np.asarray(weights, dtype=np.float64)
        if probabilities.shape != radii.shape or np.any(probabilities < 0) or not (
                probabilities.sum() > 0):
            raise TomosiftError("class weights must be one non-negative value per class")
        probabilities = probabilities / probabilities.sum()
    labels = np.zeros(n_particles, dtype=np.int64)
    positions = np.zeros((n_particles, 3), dtype=np.float64)
    placed_radii = np.zeros(n_particles, dtype=np.float64)
    for index in range(n_particles):
        label = int(rng.choice(len(radii), p=probabilities))
        radius = radii[label]
        low = np.full(3, radius + margin_voxels)
        high = size - 1 - low
        if np.any(high < low):
            raise TomosiftError(
                f"a particle of radius {radius:.1f} voxels does not fit in a volume of "
                f"{_size_text(size)} voxels ({margin_voxels:g} voxels from the faces); "
                f"0 of {n_particles} particles placed")
        position = None
        for _ in range(0, attempts, _CANDIDATE_BATCH):
            candidates = rng.uniform(low, high, size=(_CANDIDATE_BATCH, 3))
            distance = np.linalg.norm(candidates[:, None, :] - positions[None, :index], axis=2)
            free = np.all(distance >= placed_radii[None, :index] + radius + min_gap_voxels, axis=1)
            if free.any():
                position = candidates[int(np.argmax(free))]
                break
        if position is None:
            raise TomosiftError(
                f"only {index} of {n_particles} particles fit in a volume of {_size_text(size)} "
                f"voxels with a gap of {min_gap_voxels:.1f} voxels (no free place in "
                f"{attempts} tries); ask for fewer particles or a larger volume")
        labels[index], positions[index], placed_radii[index] = label, position, radius
    return labels, positions


def _size_text(size_xyz: np.ndarray) -> str:
    return " x ".join(f"{s:g}" for s in size_xyz)


def _check_maps(maps: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    if not maps:
        raise TomosiftError("no density maps given")
    names = list(maps)
    volumes = [np.asarray(maps[name], dtype=np.float32) for name in names]
    n = volumes[0].shape[0]
    for name, volume in zip(names, volumes, strict=True):
        if volume.shape != (n, n, n):
            raise TomosiftError(f"{name}: map of shape {volume.shape}, expected ({n}, {n}, {n}) "
                                "like the first map")
        if not np.all(np.isfinite(volume)):
            raise TomosiftError(f"{name}: the map contains NaN or infinite values")
        if volume.max() <= 0:
            raise TomosiftError(f"{name}: the map holds no positive density")
    return names, volumes


def tomogram_geometry(settings: SimulationSettings, plan: TomogramPlan) -> TiltSeriesGeometry:
    """The N³ tilt-series geometry of a tomogram (noise after the CTF for a dose, as the
    subtomogram simulator does)."""
    n = plan.size_voxels
    settings = replace(settings, box_voxels=n, signal_box_voxels=n)
    if plan.dose_e_per_a2 is not None:
        settings = replace(settings, noise_stage="after_ctf")  # shot noise: after the CTF
    return TiltSeriesGeometry(settings)


def simulate_tomogram(maps: dict[str, np.ndarray], settings: SimulationSettings,
                      plan: TomogramPlan, progress: bool = True) -> SimulatedTomogram:
    """Simulate a crowded tomogram (see the module docstring).

    Args:
        maps: class name -> (n, n, n) density map at ``settings.voxel_size_nm``, origin at
            voxel n // 2 (all maps the same n).
        settings: the imaging (tilts, optics, ice, reconstruction, polarity, pad factor);
            ``box_voxels`` and ``signal_box_voxels`` are ignored.
        plan: size, particles, noise and seed.
        progress: show a progress bar over the particles.

    Returns:
        The tomogram (Z, N, N) and its truth. Measured on one core, 2° steps to ±60°
        (``tomosift simulate-tomogram``, maps included): N = 128 with 40 particles 10 s
        (0.3 GB); N = 256 with 300 particles 181 s (1.0 GB): 0.52 s per particle, the
        rest the geometry and the maps.
    """
    names, volumes = _check_maps(maps)
    n_map = volumes[0].shape[0]
    size, thickness = plan.size_voxels, plan.resolved_thickness_voxels
    voxel_size_nm = settings.voxel_size_nm
    radii = np.array([support_radius_voxels(v) for v in volumes])
    labels, positions = place_particles(
        np.random.default_rng([plan.seed, _PLACEMENT_STREAM]), radii, (size, size, thickness),
        plan.n_particles, plan.min_gap_nm / voxel_size_nm, FACE_MARGIN_VOXELS)
    rotations = np.zeros((plan.n_particles, 3, 3))
    if plan.n_particles:
        rotations = Rotation.random(plan.n_particles, random_state=np.random.default_rng(
            [plan.seed, _ROTATION_STREAM])).as_matrix().reshape(-1, 3, 3)

    geometry = tomogram_geometry(settings, plan)
    settings = geometry.settings
    spectra = [padded_spectrum(solvent_corrected(v, settings.ice.solvent_contrast),
                               settings.pad_factor) for v in volumes]
    z_start = (size - thickness) // 2
    box_offset = np.array([0.0, 0.0, z_start]) - size // 2  # output voxels -> box shifts
    grid = geometry.signal_grid
    values = np.zeros(len(grid.points), dtype=np.complex64)
    with progress_bar(total=plan.n_particles, desc="tomogram", unit="particle",
                      enabled=progress) as bar:
        for label, position, rotation in zip(labels, positions, rotations, strict=True):
            values += grid.sample(spectra[label], rotation, position + box_offset)
            bar.update(1)
    signal = grid.reconstruct(values * geometry.signal_transfer())[z_start : z_start + thickness]
    del values

    noise_rng = np.random.default_rng([plan.seed, _NOISE_STREAM])
    if plan.dose_e_per_a2 is not None:
        signal *= np.float32(contrast_per_voxel_sum(settings.optics.voltage_kv, voxel_size_nm))
        tilt_sigma = tilt_noise_sigma(plan.dose_e_per_a2, settings.tilt_angles_deg,
                                      voxel_size_nm, settings.ice)
        noise = geometry.unit_noise(noise_rng, None, tilt_sigma)[z_start : z_start + thickness]
        sigma = float(tilt_sigma.mean())
    else:
        noise = geometry.unit_noise(noise_rng)[z_start : z_start + thickness]
        signal_variance = mean_box_variance(signal, positions, n_map)
        sigma = float(np.sqrt(signal_variance / (plan.snr * noise.var(dtype=np.float64))))
        noise *= np.float32(sigma)
    volume = signal + noise
    if settings.optics.ctf_enabled and not settings.dark_particles:
        volume = -volume
    return SimulatedTomogram(
        volume=np.ascontiguousarray(volume, dtype=np.float32), voxel_size_nm=voxel_size_nm,
        class_names=names, labels=labels, positions_voxels=positions, rotations=rotations,
        radii_voxels=radii, noise_sigma=sigma,
        optics=settings.optics if settings.optics.ctf_enabled else None)


def box_at(volume: np.ndarray, position_xyz: np.ndarray, box_voxels: int) -> np.ndarray:
    """The part inside ``volume`` (Z, Y, X) of the box_voxels³ box whose voxel box // 2 is
    the voxel nearest to ``position_xyz``; clipped at the faces (smaller near them)."""
    centre = np.rint(np.asarray(position_xyz)[::-1]).astype(int)  # z, y, x
    low = np.maximum(centre - box_voxels // 2, 0)
    high = np.minimum(centre - box_voxels // 2 + box_voxels, volume.shape)
    return volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]]


def mean_box_variance(volume: np.ndarray, positions_xyz: np.ndarray, box_voxels: int) -> float:
    """Mean over positions (P, 3) of the variance of the box_voxels³ box at each."""
    return float(np.mean([box_at(volume, p, box_voxels).var(dtype=np.float64)
                          for p in positions_xyz]))


def truth_table(tomogram: SimulatedTomogram, tomo_name: str):
    """The RELION particles table (pandas DataFrame) of a tomogram's truth: coordinates,
    angles of ``R.T`` and 1-based class numbers."""
    from tomosift.discovery.rotations import relion_angles
    from tomosift.tomograms.relion import particle_table

    angles = np.array([relion_angles(r.T) for r in tomogram.rotations]).reshape(-1, 3)
    extra = None
    if tomogram.optics is not None:  # RELION's defocus: Å, > 0 underfocus
        defocus_a = np.full(len(angles), tomogram.optics.defocus_um * 1e4)
        extra = {"rlnDefocusU": defocus_a, "rlnDefocusV": defocus_a.copy()}
    return particle_table(tomo_name, tomogram.positions_voxels, tomogram.size_xyz,
                          tomogram.voxel_size_nm, angles_deg=angles,
                          class_numbers=tomogram.labels + 1, extra=extra)


def write_tomogram(tomogram: SimulatedTomogram, tomogram_path: str | os.PathLike,
                   truth_path: str | os.PathLike, tomo_name: str, box_voxels: int = 40) -> None:
    """Write the tomogram (MRC) and its truth (STAR, with the class names), each atomically;
    ``box_voxels`` is the box the STAR's optics block announces for extraction. Both record
    the CTF when it was on (see the module docstring)."""
    from tomosift.io import write_mrc
    from tomosift.tomograms.pick import ctf_label
    from tomosift.tomograms.relion import write_particles_star

    table = truth_table(tomogram, tomo_name)
    optics, labels, optics_columns = tomogram.optics, [], None
    if optics is not None:
        labels = [ctf_label(optics)]
        optics_columns = {"rlnVoltage": optics.voltage_kv, "rlnSphericalAberration": optics.cs_mm,
                          "rlnAmplitudeContrast": optics.amplitude_contrast}
    write_mrc(tomogram_path, tomogram.volume, tomogram.voxel_size_nm, labels=labels)
    write_particles_star(truth_path, table, tomogram.voxel_size_nm, box_voxels,
                         class_names=tomogram.class_names, optics_columns=optics_columns)
