"""Gold-standard, resolution-limited refinement: averages that do not fit noise.

Reference-free averaging of real subtomograms fails when it aligns frequencies the data do not
support, takes one hard global maximum per particle in every iteration and starts from a single
noisy particle: the average converges to noise. This module refines as RELION and Dynamo do:

1. **Half-sets.** The members are split at random (seeded) into two halves refined
   independently; the resolution is where the FSC between the two half-maps falls below
   0.143, and both half-maps are kept. After each iteration the second half-map is aligned
   onto the first on the aligned shells (six parameters, which leave the halves independent)
   and the second half's poses move with it when that raises their FSC: two halves from one
   start can otherwise drift into frames that differ, blurring the combined average.
2. **A neutral, low-resolution start.** ``starts`` random subsets are each averaged without
   a reference (their first member is the seed; the others are aligned to it over all of
   SO(3) on the lowest shells only) and low-passed to ``start_shells`` Fourier shells. Each
   start runs the global phase (the first ``global_iterations``) with both half-sets; the one
   whose half-maps then agree best (the largest area under their FSC) goes on. Starts that
   converge to a wrong, self-consistent structure agree less far out: measured on 40
   simulated particles at SNR 0.006, the final half-set resolution ranked the runs as their
   FSC to the truth did (docs/benchmarks.md). Classification with K > 1 classes starts from K
   members far apart in rotation-invariant feature space, low-passed the same way.
3. **Resolution limited by the data.** Each iteration weights each half-map by the FSC
   (``sqrt(2 FSC / (1 + FSC))``, the half-maps' signal fraction) and low-passes it, with a
   cosine edge ``shell_margin`` shells wide, at the last shell whose FSC is above 0.143
   (never below ``start_shells``, widening by at most ``max_shell_step`` per iteration).
   Alignment uses the shells up to that limit plus the margin: nothing beyond what the
   half-sets reproduce.
4. **Poses that do not drift.** The first ``global_iterations`` search all of SO(3); after
   that each particle is searched on a local grid around its previous pose (steps shrinking
   from ``local_step_deg``). Nearby poses are weighted by their probability instead of taking
   one hard maximum: under white Gaussian noise, a normalised correlation ``cc`` over
   ``N`` Fourier coefficients gives the log-likelihood difference ``N c / (1 - c²) Δcc``
   (``c`` the best correlation), so each pose gets ``exp(N c / (1 - c²) (cc - c))``; the
   ``max_poses`` most probable enter the average with these weights. Particles (for
   alignment) and references are multiplied by a soft sphere so that neighbours in the box do
   not drive the alignment; the averages are of the unmasked particles.
5. **Per-particle weights.** Each particle's Fourier coverage enters its alignment and its
   share of the average: its missing wedge, its CTF when the defocus is known (the particle
   is compared after multiplication by its CTF, and the average is
   ``sum_i CTF_i M_i X_i / (sum_i CTF_i² M_i + ε)``), or the per-particle weights of a
   CTF-corrected import (``sum_i W_i X_i / (sum_i W_i + ε)``). ``ε`` (the Wiener term) is
   ``wiener_fraction`` times the mean of the summed weights where they are positive.

Alignment runs on Fourier-cropped boxes that just hold the aligned shells (the same
coefficients on fewer voxels); particles are aligned and summed in ``workers`` threads,
each particle on its own and combined in order, so the bytes do not depend on it.

Volumes are (n, n, n) indexed [z, y, x], bright density; poses have the
:func:`tomosift.discovery.align.align` sense: ``transform(particle, R, s)`` lies on the average.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft

from tomosift.discovery.align import (
    AlignSettings,
    Prepared,
    _full_mask,
    _half_weights,
    align_prepared,
    crop_half_spectrum,
    prepare,
    rotate_mask,
    rotate_weights,
    score_rotation,
)
from tomosift.discovery.fsc import fsc_curve, soft_sphere_mask
from tomosift.discovery.rotations import local_rotations, rotation_angle_deg, transform_volume
from tomosift.discovery.wedge import check_tilt_range, fourier_frequencies, wedge_mask
from tomosift.errors import TomosiftError
from tomosift.progress import progress_bar
from tomosift.simulate.ctf import Optics, ctf


@dataclass(frozen=True)
class RefineSettings:
    """How :func:`refine` runs; see the module docstring for each step.

    Attributes:
        classes: number of classes K (1 = one average).
        iterations: refinement iterations.
        tilt_min_deg, tilt_max_deg: the particles' tilt range (their missing wedge), unless
            per-particle Fourier weights are given.
        seed: random seed (half-sets, starts).
        start_shells: the start's resolution, Fourier shells (index units).
        shell_margin: shells beyond the FSC limit that alignment still uses (cosine edge).
        max_shell_step: most shells the limit widens per iteration.
        fsc_threshold: FSC between half-maps that sets the limit.
        global_iterations: iterations with a global search (then local).
        global_peaks: rotational-search peaks scored per particle and class in a global
            iteration; they are the candidate poses of its probability weighting.
        local_step_deg: angular step of the first local search (it shrinks by
            ``local_shrink`` per iteration, to no less than ``local_min_step_deg``).
        local_rings, local_directions: the local grid (:func:`~tomosift.discovery.rotations.
            local_rotations`): 1 + 2 rings directions rotations per particle and class.
        starts: random-subset starts tried (K = 1).
        start_subset: members per random-subset start.
        start_probes: particles outside a subset that score its start.
        max_poses: most probable poses kept per particle.
        mask_edge_voxels: soft edge of the spherical particle and reference mask; the radius
            is ``n / 2 - mask_edge_voxels - 1`` unless ``mask_radius_voxels`` is set.
        wiener_fraction: the Wiener term as a fraction of the mean summed weight.
        workers: threads that align particles and sum their terms; the results are the
            same bytes for any number.
        align: alignment settings (shells and score radius are set per iteration).
    """

    classes: int = 1
    iterations: int = 8
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    seed: int = 1
    start_shells: int = 3
    shell_margin: int = 2
    max_shell_step: int = 2
    fsc_threshold: float = 0.143
    global_iterations: int = 3
    global_peaks: int = 20
    local_step_deg: float = 6.0
    local_shrink: float = 0.75
    local_min_step_deg: float = 2.0
    local_rings: int = 2
    local_directions: int = 8
    starts: int = 3
    start_subset: int = 8
    start_probes: int = 12
    max_poses: int = 20
    mask_radius_voxels: float | None = None
    mask_edge_voxels: float = 3.0
    wiener_fraction: float = 0.1
    workers: int = 1
    align: AlignSettings = field(default_factory=AlignSettings)

    def __post_init__(self) -> None:
        if self.classes < 1 or self.iterations < 1:
            raise TomosiftError("classes and iterations must be >= 1")
        if self.workers < 1:
            raise TomosiftError(f"workers must be >= 1, got {self.workers}")
        if self.start_shells < 2:
            raise TomosiftError(f"start_shells must be >= 2, got {self.start_shells}")
        if self.shell_margin < 0 or self.max_shell_step < 0:
            raise TomosiftError("shell_margin and max_shell_step must be >= 0")
        if self.starts < 1 or self.start_subset < 1 or self.max_poses < 1:
            raise TomosiftError("starts, start_subset and max_poses must be >= 1")
        if self.local_step_deg <= 0 or self.local_rings < 1 or self.local_directions < 1:
            raise TomosiftError("the local search needs a step > 0, rings and directions >= 1")
        if self.wiener_fraction < 0:
            raise TomosiftError(f"wiener_fraction must be >= 0, got {self.wiener_fraction}")
        check_tilt_range(self.tilt_min_deg, self.tilt_max_deg)


@dataclass
class Observations:
    """What each particle observed, in its own frame.

    Attributes:
        voxel_size_nm: voxel edge (nm), for the CTF.
        tilt_min_deg, tilt_max_deg: the missing wedge shared by all particles (used unless
            ``fourier_weights`` is set).
        defocus_um: (N,) per-particle defocus (underfocus > 0) of CTF-uncorrected volumes, or
            None (then the CTF is ignored).
        optics: the microscope of ``defocus_um`` (None = :class:`Optics` defaults).
        fourier_weights: (N, n, n, n // 2 + 1) per-particle Fourier coverage (summed CTF² x
            dose weight², 0 where unobserved) of CTF-corrected volumes, or None.
    """

    voxel_size_nm: float = 1.0
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    defocus_um: np.ndarray | None = None
    optics: Optics | None = None
    fourier_weights: np.ndarray | None = None
    _transfers: dict = field(default_factory=dict, repr=False, compare=False)
    _wedges: dict = field(default_factory=dict, repr=False, compare=False)

    def transfer(self, index: int, box: int) -> np.ndarray | None:
        """(n, n, n // 2 + 1) float32 signal transfer of bright particle ``index`` in its own
        frame, radial (the sign-flipped CTF, since bright = inverted contrast), or None."""
        if self.defocus_um is None:
            return None
        key = (index, box)
        if key not in self._transfers:
            optics = replace(self.optics or Optics(), defocus_um=float(self.defocus_um[index]))
            radius = _radius_grid(box)
            self._transfers[key] = (-ctf(radius / (box * self.voxel_size_nm), optics)
                                    ).astype(np.float32)
        return self._transfers[key]

    def filters(self, index: int, box: int, rotation: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(numerator, denominator) weights (n, n, n // 2 + 1) of particle ``index`` after the
        rotation R (identity if None): ``T M`` and ``T² M`` for a transfer T and wedge M, or
        ``W`` and ``W`` for per-particle Fourier weights."""
        if self.fourier_weights is not None:
            weights = np.asarray(self.fourier_weights[index], dtype=np.float32)
            if rotation is not None:
                weights = rotate_weights(weights, rotation)
            return weights, weights
        if box not in self._wedges:
            wedge = wedge_mask(box, self.tilt_min_deg, self.tilt_max_deg)
            self._wedges[box] = (wedge, _full_mask(wedge, box))
        wedge, full = self._wedges[box]
        mask = wedge if rotation is None else rotate_mask(wedge, rotation, full)
        transfer = self.transfer(index, box)
        if transfer is None:
            return mask, mask
        return transfer * mask, transfer**2 * mask


@dataclass
class RefineResult:
    """The refined averages and each particle's class and poses.

    Attributes:
        averages: (K, n, n, n) float32 the full averages (both halves), Wiener-normalised.
        half_maps: (K, 2, n, n, n) float32 the two independent half-maps per class.
        fsc: (K, n // 2 + 1) FSC between the half-maps per shell (soft spherical mask).
        resolution_shell: (K,) the last shell with FSC >= the threshold (0 = none).
        classes: (N,) 0-based class of each particle.
        halves: (N,) 0 or 1, the half-set of each particle.
        rotations, shifts_voxels, scores: (N, 3, 3), (N, 3), (N,) the most probable pose and
            its constrained correlation against the particle's class and half reference.
        history: per iteration, a dict: iteration, mean_score, limit_shell (the alignment
            limit used), resolution_shell per class, class sizes, reassigned particles.
        summed_weights: (K, n, n, n // 2 + 1) the summed denominators (coverage) per class.
        iteration_averages: the (K, n, n, n) averages after each iteration.
    """

    averages: np.ndarray
    half_maps: np.ndarray
    fsc: np.ndarray
    resolution_shell: np.ndarray
    classes: np.ndarray
    halves: np.ndarray
    rotations: np.ndarray
    shifts_voxels: np.ndarray
    scores: np.ndarray
    history: list[dict]
    summed_weights: np.ndarray
    iteration_averages: list[np.ndarray] = field(default_factory=list)


# -- small pieces ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _radius_grid(box: int) -> np.ndarray:
    """(n, n, n // 2 + 1) |k| of the rfftn grid (index units), read-only."""
    k = fourier_frequencies(box)
    radius = np.sqrt(np.einsum("...i,...i->...", k, k))
    radius.setflags(write=False)
    return radius


def low_pass(volume: np.ndarray, limit_shell: float, edge_shells: float,
             shell_weights: np.ndarray | None = None) -> np.ndarray:
    """(n, n, n) volume low-passed: 1 up to ``limit_shell``, a cosine edge to
    ``limit_shell + edge_shells``, 0 beyond; times ``shell_weights[shell]`` per integer shell
    when given (e.g. FSC weights)."""
    box = volume.shape[0]
    radius = _radius_grid(box)
    filt = np.clip((radius - limit_shell) / max(edge_shells, 1e-6), 0.0, 1.0)
    filt = 0.5 * (1.0 + np.cos(np.pi * filt))
    if shell_weights is not None:
        shells = np.minimum(np.rint(radius).astype(int), len(shell_weights) - 1)
        filt = filt * shell_weights[shells]
    spectrum = scipy.fft.rfftn(np.asarray(volume, dtype=np.float32)) * filt
    return scipy.fft.irfftn(spectrum, s=(box,) * 3).astype(np.float32)


def fsc_weights(fsc: np.ndarray) -> np.ndarray:
    """Per-shell reference weights sqrt(2 FSC / (1 + FSC)) (0 where the FSC is <= 0)."""
    f = np.clip(np.asarray(fsc, dtype=np.float64), 0.0, 0.999)
    return np.sqrt(2.0 * f / (1.0 + f))


def last_shell_above(fsc: np.ndarray, threshold: float) -> int:
    """The last shell (from 1) before the FSC first falls below ``threshold`` (0 if shell 1
    already does; the last shell if it never does)."""
    below = np.flatnonzero((np.arange(len(fsc)) >= 1) & (np.asarray(fsc) < threshold))
    return int(below[0]) - 1 if below.size else len(fsc) - 1


def wiener_average(numerator: np.ndarray, denominator: np.ndarray, wiener_fraction: float
                   ) -> np.ndarray:
    """irfftn of numerator / (denominator + ε), ε = fraction x the mean positive denominator;
    0 where nothing was observed. Returns (n, n, n) float32."""
    box = numerator.shape[0]
    observed = denominator > 1e-12
    if not np.any(observed):
        return np.zeros((box,) * 3, dtype=np.float32)
    epsilon = wiener_fraction * float(denominator[observed].mean())
    spectrum = np.where(observed, numerator / (denominator + epsilon + 1e-30), 0.0)
    return scipy.fft.irfftn(spectrum, s=(box,) * 3).astype(np.float32)


def pose_probabilities(scores: np.ndarray, n_coefficients: float, max_poses: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of the most probable poses among constrained correlations
    ``scores`` over ``n_coefficients`` Fourier coefficients: weights ∝
    exp(N c / (1 - c²) (cc - c)), c the best score (clipped to [0.01, 0.99]); at most
    ``max_poses`` poses, those below 1e-3 of the best dropped; weights sum to 1."""
    scores = np.asarray(scores, dtype=np.float64)
    best = float(scores.max())
    c = min(max(best, 0.01), 0.99)
    beta = n_coefficients * c / (1.0 - c * c)
    order = np.argsort(scores)[::-1][:max_poses]
    weights = np.exp(beta * (scores[order] - best))
    keep = weights >= 1e-3
    order, weights = order[keep], weights[keep]
    return order, weights / weights.sum()


def crop_box(top_shell: int, box: int) -> int:
    """The even box m <= n whose Nyquist shell lies 3 shells beyond ``top_shell``: alignment on
    shells <= top_shell sees the same Fourier coefficients on m³ voxels as on n³."""
    return int(min(box, 2 * (top_shell + 3)))


def _crop(volume: np.ndarray, size: int) -> np.ndarray:
    """(m, m, m) float32 Fourier crop of an (n, n, n) volume (mean kept; voxel n // 2 lands on
    m // 2), in numpy."""
    box = volume.shape[0]
    if size == box:
        return volume
    spectrum = crop_half_spectrum(scipy.fft.rfftn(volume), size)
    return (scipy.fft.irfftn(spectrum, s=(size,) * 3) / (box / size) ** 3).astype(np.float32)


class _Particle:
    """One particle's data for refinement: raw volume, its alignment form and filters."""

    def __init__(self, index: int, volume: np.ndarray, observations: Observations,
                 particle_mask: np.ndarray):
        box = volume.shape[0]
        self.index = index
        self.volume = volume
        numerator, denominator = observations.filters(index, box)
        self.observed = (denominator > 1e-6 * max(float(denominator.max()), 1e-30))
        # Alignment form: soft-masked and multiplied by its transfer (the matched filter).
        spectrum = scipy.fft.rfftn(volume * particle_mask) * numerator
        self.aligned = scipy.fft.irfftn(spectrum, s=(box,) * 3).astype(np.float32)
        self._prepared: dict[tuple, Prepared] = {}

    def prepared(self, settings: AlignSettings, size: int) -> Prepared:
        """The alignment form on an m = ``size`` box (Fourier-cropped), prepared."""
        key = (settings.shell_min, settings.shell_max, settings.max_degree, size)
        if key not in self._prepared:
            observed = crop_half_spectrum(self.observed, size).astype(np.float32)
            self._prepared = {key: prepare(_crop(self.aligned, size), observed, settings)}
        return self._prepared[key]


def _n_coefficients(observed: np.ndarray, radius: float) -> float:
    """Full-grid Fourier coefficients of an rfftn-layout mask within ``radius`` (not DC)."""
    return float(np.sum(_half_weights(observed.shape[0], radius) * observed, dtype=np.float64))


# -- refinement -----------------------------------------------------------------------------


@dataclass
class _Accumulator:
    numerator: np.ndarray
    denominator: np.ndarray

    @classmethod
    def empty(cls, box: int) -> _Accumulator:
        shape = (box, box, box // 2 + 1)
        return cls(np.zeros(shape, dtype=np.complex128), np.zeros(shape, dtype=np.float64))


def _add(acc: _Accumulator, particle: _Particle, observations: Observations,
         poses: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    box = particle.volume.shape[0]
    for rotation, shift, weight in poses:
        numerator, denominator = observations.filters(particle.index, box, rotation)
        moved = transform_volume(particle.volume, rotation, shift)
        acc.numerator += weight * scipy.fft.rfftn(moved) * numerator
        acc.denominator += weight * denominator


def _align_settings(settings: RefineSettings, limit: int, box: int
                    ) -> tuple[AlignSettings, int]:
    """(alignment settings on the cropped box, that box m) for shells <= limit + margin;
    shifts are in cropped voxels (n / m of the full box's)."""
    top = min(limit + settings.shell_margin, box // 2 - 1)
    size = crop_box(top, box)
    # No peak screening: the refinement's full searches (the start, the half-map registration)
    # are a handful per iteration, so screening saves nothing here, and it changes which of
    # near-equal peaks a few-particle start takes (a 4 + 4 mixture of 1bxn and 3hhb averaged
    # to 2.34 nm with it, 3.41 nm without).
    return replace(settings.align, shell_min=min(settings.align.shell_min, top),
                   shell_max=top, score_radius=float(top), screen_peaks=False,
                   max_shift_voxels=settings.align.max_shift_voxels * size / box), size


def _reference(volume: np.ndarray, limit: int, margin: int, weights: np.ndarray | None,
               mask: np.ndarray, align: tuple[AlignSettings, int]) -> Prepared:
    """A reference for alignment: FSC-weighted (``weights``), low-passed and masked."""
    align_settings, size = align
    filtered = low_pass(volume, limit, max(margin, 1), weights) * mask
    return prepare(_crop(filtered.astype(np.float32), size), None, align_settings)


def _global_candidates(reference: Prepared, particle: Prepared, settings: AlignSettings,
                       peaks_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotations (P, 3, 3), shifts (P, 3), scores (P,)) at the rotational search's peaks."""
    from tomosift.discovery.align import _rotation_peaks, rotational_scores

    peaks = _rotation_peaks(rotational_scores(reference, particle, settings),
                            replace(settings, peaks=peaks_count))
    found = [score_rotation(reference, particle, rotation, settings) for rotation in peaks]
    return (np.stack(peaks), np.stack([shift for _, shift in found]),
            np.array([score for score, _ in found]))


def _local_candidates(reference: Prepared, particle: Prepared, centre: np.ndarray,
                      step_deg: float, refine: RefineSettings, settings: AlignSettings
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rotations = local_rotations(centre, step_deg, refine.local_rings, refine.local_directions)
    found = [score_rotation(reference, particle, rotation, settings) for rotation in rotations]
    return (rotations, np.stack([shift for _, shift in found]),
            np.array([score for score, _ in found]))


def _subset_start(particles: list[_Particle], observations: Observations,
                  settings: RefineSettings, mask: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """A reference-free average of a few members: the first is the seed, the others are
    aligned to it over all of SO(3) on the start's shells. Returns (n, n, n) float32."""
    box = particles[0].volume.shape[0]
    align = _align_settings(settings, settings.start_shells - settings.shell_margin, box)
    align_settings, size = align
    seed = particles[int(subset[0])]
    reference = _reference(seed.aligned, settings.start_shells, settings.shell_margin, None,
                           mask, align)
    acc = _Accumulator.empty(box)
    _add(acc, seed, observations, [(np.eye(3), np.zeros(3), 1.0)])
    for i in subset[1:]:
        found = align_prepared(reference, particles[int(i)].prepared(align_settings, size),
                               align_settings)
        _add(acc, particles[int(i)], observations,
             [(found.rotation, found.shift_voxels * box / size, 1.0)])
    return wiener_average(acc.numerator, acc.denominator, settings.wiener_fraction)


def _class_seeds(volumes: np.ndarray, k: int, seed: int) -> list[int]:
    """K members far apart in rotation-invariant feature space (seeded farthest-point walk)."""
    from tomosift.classify.rif import RifSettings, rif_features

    features = rif_features(volumes, RifSettings(normalize=True))
    features = (features - features.mean(0)) / np.maximum(features.std(0), 1e-12)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(volumes)))]
    distance = np.linalg.norm(features - features[chosen[0]], axis=1)
    while len(chosen) < k:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(features - features[chosen[-1]], axis=1))
    return chosen


@dataclass
class _State:
    """Everything one refinement carries from iteration to iteration."""

    references: list[list[Prepared]]  # [class][half]
    limit: int
    best_rotation: np.ndarray  # (N, K, 3, 3)
    best_shift: np.ndarray  # (N, K, 3)
    classes: np.ndarray  # (N,)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    half_maps: np.ndarray | None = None  # (K, 2, n, n, n)
    fsc: np.ndarray | None = None  # (K, n // 2 + 1)
    averages: np.ndarray | None = None  # (K, n, n, n)
    summed: np.ndarray | None = None  # (K, n, n, n // 2 + 1)
    resolution: np.ndarray | None = None  # (K,)
    changed: int = 0
    poses: dict = field(default_factory=dict)  # particle -> [(R, s, weight)] in its class
    accumulators: list = field(default_factory=list)  # [class][half] _Accumulator

    @classmethod
    def start(cls, starts: list[np.ndarray], n_particles: int, limit: int,
              settings: RefineSettings, mask: np.ndarray) -> _State:
        box, k = starts[0].shape[0], len(starts)
        align = _align_settings(settings, limit, box)
        references = [[_reference(v, limit, settings.shell_margin, None, mask, align)
                       ] * 2 for v in starts]
        return cls(references, limit, np.tile(np.eye(3), (n_particles, k, 1, 1)),
                   np.zeros((n_particles, k, 3)), np.full(n_particles, -1, dtype=np.int64))


#: What the worker functions read during one :func:`_parallel_map`.
_CONTEXT: dict = {}


def _parallel_map(function, indices, workers: int, context: dict, bar=None) -> list:
    """``[function(i) for i in indices]``, in order, over ``workers`` threads when more than
    one (the functions read ``context`` through :data:`_CONTEXT`). Each item is computed alone
    and the caller combines them in order, so the result is the same bytes whatever the number
    of workers.

    Threads, not forked processes: the FFTs and array arithmetic release the GIL, and a fork of
    a process whose other threads (PyTorch's, OpenMP's, an allocator's) may hold a lock can
    leave the child waiting forever, which a CI run did at this point (issue 20)."""
    from concurrent.futures import ThreadPoolExecutor

    global _CONTEXT
    _CONTEXT = context
    try:
        if workers <= 1:
            out = []
            for i in indices:
                out.append(function(i))
                if bar is not None:
                    bar.update(1)
            return out
        with ThreadPoolExecutor(workers) as pool:
            out = []
            for item in pool.map(function, indices):
                out.append(item)
                if bar is not None:
                    bar.update(1)
            return out
    finally:
        _CONTEXT = {}


def _align_one(i: int):
    """Particle i against its half's class references: per class its best pose; the best
    class, its score and its probability-weighted poses."""
    c_ = _CONTEXT
    particle, state, settings = c_["particles"][i], c_["state"], c_["settings"]
    align_settings, size, box = c_["align_settings"], c_["size"], c_["box"]
    prepared = particle.prepared(align_settings, size)
    n_coefficients = _n_coefficients(particle.observed, float(align_settings.score_radius))
    k = len(state.references)
    best_rotations, best_shifts = np.empty((k, 3, 3)), np.empty((k, 3))
    best: tuple | None = None
    for c in range(k):
        reference = state.references[c][c_["halves"][i]]
        if c_["is_global"]:
            found = _global_candidates(reference, prepared, align_settings,
                                       settings.global_peaks)
        else:
            found = _local_candidates(reference, prepared, state.best_rotation[i, c],
                                      c_["step_deg"], settings, align_settings)
        found = (found[0], found[1] * box / size, found[2])
        top = int(np.argmax(found[2]))
        best_rotations[c], best_shifts[c] = found[0][top], found[1][top]
        if best is None or found[2][top] > best[0]:
            best = (float(found[2][top]), c, found)
    score, c, (rotations, shifts, candidate_scores) = best
    chosen, weights = pose_probabilities(candidate_scores, n_coefficients, settings.max_poses)
    poses = [(rotations[j], shifts[j], float(w)) for j, w in zip(chosen, weights, strict=True)]
    return best_rotations, best_shifts, c, score, poses


def _contribution(i: int) -> _Accumulator:
    """Particle i's terms of its class and half-set average."""
    c_ = _CONTEXT
    particle = c_["particles"][i]
    acc = _Accumulator.empty(particle.volume.shape[0])
    _add(acc, particle, c_["observations"], c_["state"].poses[i])
    return acc


def _iterate(state: _State, particles: list[_Particle], observations: Observations,
             halves: np.ndarray, settings: RefineSettings, is_global: bool, step_deg: float,
             mask: np.ndarray, bar) -> None:
    """One iteration in place: align every particle to its half's references, weight its
    poses, average each class and half, and measure the half-set FSC."""
    box = particles[0].volume.shape[0]
    k = len(state.references)
    align_settings, size = _align_settings(settings, state.limit, box)
    previous = state.classes.copy()
    context = {"particles": particles, "state": state, "settings": settings, "box": box,
               "align_settings": align_settings, "size": size, "halves": halves,
               "is_global": is_global, "step_deg": step_deg}
    found = _parallel_map(_align_one, range(len(particles)), settings.workers, context, bar)
    scores = np.zeros(len(particles))
    for i, (rotations, shifts, c, score, poses) in enumerate(found):
        state.best_rotation[i], state.best_shift[i] = rotations, shifts
        state.classes[i], scores[i], state.poses[i] = c, score, poses
    for c in range(k):
        if not np.any(state.classes == c):  # an empty class restarts from the worst fit
            worst = int(np.argmin(scores))
            state.classes[worst] = c
            state.poses[worst] = [(state.best_rotation[worst, c], state.best_shift[worst, c],
                                   1.0)]
    state.scores = scores
    state.changed = int(np.sum(state.classes != previous))
    _accumulate(state, particles, observations, halves, settings, mask)


def _accumulate(state: _State, particles: list[_Particle], observations: Observations,
                halves: np.ndarray, settings: RefineSettings, mask: np.ndarray,
                only: tuple[int, int] | None = None) -> None:
    """Half-maps, their FSC and resolution, the averages and coverage from the state's poses
    (re-summing only the half-set ``only`` = (class, half) when given)."""
    box = particles[0].volume.shape[0]
    k = len(state.references)
    if only is None or not state.accumulators:
        state.accumulators = [[_Accumulator.empty(box) for _ in range(2)] for _ in range(k)]
        chosen = range(len(particles))
    else:
        state.accumulators[only[0]][only[1]] = _Accumulator.empty(box)
        chosen = np.flatnonzero((state.classes == only[0]) & (halves == only[1]))
    accumulators = state.accumulators
    context = {"particles": particles, "state": state, "observations": observations}
    for i, term in zip(chosen, _parallel_map(_contribution, chosen, settings.workers, context),
                       strict=True):
        target = accumulators[state.classes[i]][halves[i]]
        target.numerator += term.numerator
        target.denominator += term.denominator
    state.half_maps = np.zeros((k, 2, box, box, box), dtype=np.float32)
    state.fsc = np.zeros((k, box // 2 + 1))
    state.averages = np.zeros((k, box, box, box), dtype=np.float32)
    state.summed = np.zeros((k, box, box, box // 2 + 1), dtype=np.float32)
    state.resolution = np.zeros(k, dtype=np.int64)
    for c in range(k):
        for h in range(2):
            state.half_maps[c, h] = wiener_average(accumulators[c][h].numerator,
                                                   accumulators[c][h].denominator,
                                                   settings.wiener_fraction)
        _, state.fsc[c] = fsc_curve(state.half_maps[c, 0], state.half_maps[c, 1], mask)
        state.resolution[c] = last_shell_above(state.fsc[c], settings.fsc_threshold)
        numerator = accumulators[c][0].numerator + accumulators[c][1].numerator
        denominator = accumulators[c][0].denominator + accumulators[c][1].denominator
        state.averages[c] = wiener_average(numerator, denominator, settings.wiener_fraction)
        state.summed[c] = denominator


def _register_halves(state: _State, particles: list[_Particle], observations: Observations,
                     halves: np.ndarray, settings: RefineSettings, mask: np.ndarray) -> bool:
    """Keep each class's two half-sets in one frame: align the second half-map onto the first
    on the aligned shells (6 parameters, so the halves stay independent) and move the second
    half's poses with it when that raises their FSC on those shells. Returns whether any
    class moved (its maps are then re-averaged from the moved poses)."""
    from tomosift.discovery.align import align

    box = state.half_maps.shape[-1]
    align_settings, _ = _align_settings(settings, state.limit, box)
    align_settings = replace(align_settings, max_shift_voxels=settings.align.max_shift_voxels)
    top = int(align_settings.shell_max)
    moved = False
    for c in range(len(state.references)):
        first, second = (low_pass(state.half_maps[c, h], state.limit, settings.shell_margin)
                         * mask for h in range(2))
        found = align(first, second, None, None, align_settings)
        if rotation_angle_deg(np.eye(3), found.rotation) < 1.0 and np.all(
                np.abs(found.shift_voxels) < 0.25):
            continue
        after = transform_volume(state.half_maps[c, 1], found.rotation, found.shift_voxels)
        before_fsc = state.fsc[c][1: top + 1].mean()
        after_fsc = fsc_curve(state.half_maps[c, 0], after, mask)[1][1: top + 1].mean()
        if after_fsc <= before_fsc:
            continue
        for i in np.flatnonzero((halves == 1) & (state.classes == c)):
            state.poses[i] = [(found.rotation @ r, found.rotation @ t + found.shift_voxels, w)
                              for r, t, w in state.poses[i]]
            state.best_rotation[i, c] = found.rotation @ state.best_rotation[i, c]
            state.best_shift[i, c] = found.rotation @ state.best_shift[i, c] + found.shift_voxels
        _accumulate(state, particles, observations, halves, settings, mask, only=(c, 1))
        moved = True
    return moved


def _next_references(state: _State, settings: RefineSettings, mask: np.ndarray) -> None:
    """Widen the limit as the half-sets allow and filter the half-maps into references."""
    box = state.half_maps.shape[-1]
    top = box // 2 - 1 - settings.shell_margin
    state.limit = int(min(max(settings.start_shells, int(state.resolution.min())),
                          state.limit + settings.max_shell_step, top))
    align = _align_settings(settings, state.limit, box)
    state.references = [[_reference(state.half_maps[c, h], state.limit, settings.shell_margin,
                                    fsc_weights(state.fsc[c]), mask, align)
                         for h in range(2)] for c in range(len(state.references))]


def fsc_area(fsc: np.ndarray) -> float:
    """The area under (K, S) half-set FSC curves from shell 1, negative values as 0, the worst
    class: how far, and how well, the half-sets agree."""
    return float(np.min(np.clip(np.asarray(fsc)[:, 1:], 0.0, None).sum(axis=1)))


def refine(volumes: np.ndarray, settings: RefineSettings = RefineSettings(),
           observations: Observations | None = None, progress: bool = True,
           initial: np.ndarray | None = None) -> RefineResult:
    """Reference-free, gold-standard refinement (and classification for K > 1) of
    (N, n, n, n) bright particles; see the module docstring.

    ``initial``: (K, n, n, n) or (n, n, n) starting references instead of the reference-free
    start (they are low-passed to ``start_shells`` like it), e.g. to test stability.

    Same input and seed give the same bytes whatever the thread limits: probability-weighted
    poses carry every last bit into the average, and multi-threaded BLAS sums in another
    order, so the small matrix products here run on one thread.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _refine(volumes, settings, observations, progress, initial)


def _refine(volumes: np.ndarray, settings: RefineSettings, observations: Observations | None,
            progress: bool, initial: np.ndarray | None) -> RefineResult:
    volumes = np.asarray(volumes, dtype=np.float32)
    k = settings.classes
    if volumes.ndim != 4 or len(volumes) < max(2 * k, 2):
        raise TomosiftError(f"need at least {max(2 * k, 2)} cubic subtomograms for {k} "
                            f"class(es) in two half-sets, got {len(volumes)}")
    if not np.all(np.isfinite(volumes)):
        raise TomosiftError("the particles contain NaN or infinite values")
    n_particles, box = len(volumes), volumes.shape[1]
    if observations is None:
        observations = Observations(tilt_min_deg=settings.tilt_min_deg,
                                    tilt_max_deg=settings.tilt_max_deg)
    if observations.fourier_weights is not None and (
            observations.fourier_weights.shape != (n_particles, box, box, box // 2 + 1)):
        raise TomosiftError(f"Fourier weights of shape {observations.fourier_weights.shape}, "
                            f"expected {(n_particles, box, box, box // 2 + 1)}")
    rng = np.random.default_rng(settings.seed)
    mask = soft_sphere_mask(box, settings.mask_radius_voxels,
                            settings.mask_edge_voxels).astype(np.float32)
    particles = [_Particle(i, volumes[i], observations, mask) for i in range(n_particles)]
    halves = np.zeros(n_particles, dtype=np.int64)
    halves[rng.permutation(n_particles)[n_particles // 2:]] = 1

    if initial is not None:
        candidates = [list(np.asarray(initial, dtype=np.float32).reshape(k, box, box, box))]
    elif k == 1:
        size = min(settings.start_subset, n_particles)
        candidates = [[_subset_start(particles, observations, settings, mask,
                                     rng.permutation(n_particles)[:size])]
                      for _ in range(settings.starts)]
    else:
        candidates = [[particles[i].volume for i in _class_seeds(volumes, k, settings.seed)]]
    def run(state: _State, iterations: range, history: list[dict],
            averages: list[np.ndarray], label: str) -> None:
        step = settings.local_step_deg * settings.local_shrink ** max(
            0, iterations.start - settings.global_iterations - 1)
        for iteration in iterations:
            is_global = iteration <= settings.global_iterations
            bar = progress_bar(total=n_particles, desc=f"refinement {iteration}/"
                               f"{settings.iterations}{label}", unit="particle",
                               enabled=progress)
            with bar:
                _iterate(state, particles, observations, halves, settings, is_global, step,
                         mask, bar)
            registered = _register_halves(state, particles, observations, halves, settings,
                                          mask)
            averages.append(state.averages.copy())
            history.append({
                "iteration": iteration, "mean_score": float(state.scores.mean()),
                "limit_shell": state.limit, "resolution_shell": state.resolution.tolist(),
                "class_sizes": np.bincount(state.classes, minlength=k).tolist(),
                "changed": state.changed, "halves_registered": registered,
            })
            _next_references(state, settings, mask)
            if not is_global:
                step = max(step * settings.local_shrink, settings.local_min_step_deg)

    # The global phase from each start; the start whose half-sets agree best goes on.
    first_phase = range(1, max(1, min(settings.global_iterations, settings.iterations)) + 1)
    trials = []
    for number, start in enumerate(candidates, start=1):
        trial = _State.start(start, n_particles, settings.start_shells, settings, mask)
        trial_history: list[dict] = []
        trial_averages: list[np.ndarray] = []
        label = f" (start {number}/{len(candidates)})" if len(candidates) > 1 else ""
        run(trial, first_phase, trial_history, trial_averages, label)
        trials.append((fsc_area(trial.fsc), trial, trial_history, trial_averages))
    _, state, history, iteration_averages = max(trials, key=lambda t: t[0])
    for record in history:
        record["starts_tried"] = len(candidates)
    run(state, range(first_phase.stop, settings.iterations + 1), history, iteration_averages,
        "")
    index = np.arange(n_particles)
    return RefineResult(state.averages, state.half_maps, state.fsc, state.resolution,
                        state.classes, halves, state.best_rotation[index, state.classes],
                        state.best_shift[index, state.classes], state.scores, history,
                        state.summed, iteration_averages)
