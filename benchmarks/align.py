"""Accuracy and speed of subtomogram alignment over all of SO(3) under a ±60° missing wedge.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps python benchmarks/align.py \
        [--trials 40] [--structure 1u6g] [--speed 60] [--baseline-rotations 200]

Prints (a) the recovery rate (geodesic error <= 10° and shift error <= 1 voxel per axis) of
``--trials`` random poses (uniform rotation, shift uniform in ±3 voxels per axis) of a 40³
density map, wedge-masked, aligned back to the unmasked map, noise-free and at SNR 0.1
(white noise of variance signal variance / 0.1 added before masking), with today's search
and with the search as it was before issue 20 (:func:`legacy_align_prepared`, kept here as
the same-run baseline); for a symmetric complex (``--symmetric``) the pose is judged by the
correlation of the noise-free particle, moved by the found pose, with the map (a symmetry
mate scores as high as the truth); (b) alignments per second, today's and the legacy search
taking turns in one run (so that both see the same load): one thread, two threads (as the
census and the refinement run them) and two processes; (c) the same for a plain grid search
(constrained correlation with an FFT translation search at every rotation of a uniform grid
whose covering radius is about 10°) and the speed ratio. BLAS/OpenMP run one thread per process.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
from machine import machine_line  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from tomosift.density import DensitySettings, make_density  # noqa: E402
from tomosift.discovery import align as align_module  # noqa: E402
from tomosift.discovery.align import (  # noqa: E402
    Alignment,
    AlignSettings,
    Prepared,
    align_prepared,
    prepare,
    score_rotation,
)
from tomosift.discovery.rotations import rotation_angle_deg, transform_volume  # noqa: E402
from tomosift.discovery.wedge import apply_mask, wedge_mask  # noqa: E402
from tomosift.structures import find_in_dirs, search_dirs  # noqa: E402

MAX_SHIFT_VOXELS = 3.0
TILT_DEG = 60.0


def make_particles(volume: np.ndarray, count: int, snr: float | None, seed: int):
    """(particles, true rotations, true shifts) of wedge-masked copies in random poses."""
    rng = np.random.default_rng(seed)
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    particles, rotations, shifts = [], [], []
    for _ in range(count):
        rotation = Rotation.random(random_state=rng).as_matrix()
        shift = rng.uniform(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS, size=3)
        particle = transform_volume(volume, rotation, shift)
        if snr is not None:
            particle = particle + rng.normal(0, math.sqrt(particle.var() / snr), particle.shape)
        particles.append(apply_mask(particle, mask))
        rotations.append(rotation)
        shifts.append(shift)
    return particles, rotations, shifts


# -- the search before issue 20, the same-run baseline ---------------------------------------


def legacy_rotational_scores(reference: Prepared, moving: Prepared, settings: AlignSettings
                             ) -> np.ndarray:
    """The Euler-grid scores as computed before issue 20: three-operand einsums, complex128
    full 2D FFTs (the same numbers as today's to ~1e-6)."""
    max_degree = settings.max_degree
    d = align_module._wigner_small_d(max_degree, align_module._betas(settings))
    weights = settings.shells(reference.box).astype(np.float64) ** settings.shell_power
    a, b = reference.coefficients, moving.coefficients
    products = np.stack([np.einsum("r,rlp,rlq->lpq", weights, np.conj(a[i]), b[j])
                         for i, j in ((0, 0), (1, 2), (2, 1))])
    count = settings.angular_samples
    transfer = np.einsum("blpq,clpq->cbpq", d, products)
    grid = np.zeros((2, len(d), count, count), dtype=np.complex128)
    orders = np.arange(-max_degree, max_degree + 1) % count
    grid[0][:, orders[:, None], orders[None, :]] = transfer[0]
    grid[1][:, orders[:, None], orders[None, :]] = transfer[1] + 1j * transfer[2]
    correlation = scipy.fft.fft2(grid, axes=(2, 3))
    numerator, first, second = correlation[0].real, correlation[1].real, correlation[1].imag
    floor = 1e-6 * max(float(first.max()), float(second.max()), 1e-30)
    return numerator / np.sqrt(np.maximum(first, floor) * np.maximum(second, floor))


def legacy_peaks(scores: np.ndarray, settings: AlignSettings) -> list[np.ndarray]:
    """The peaks as found before issue 20: scipy's maximum filter over the whole grid (the
    sub-grid refinement and the separation are today's, unchanged)."""
    local = ndimage.maximum_filter(scores, size=3, mode=("nearest", "wrap", "wrap"))
    candidates = np.flatnonzero(scores.ravel() >= local.ravel())
    candidates = candidates[np.argsort(scores.ravel()[candidates])[::-1]]
    return align_module.distinct_peaks(scores, candidates, settings)


def legacy_score_rotation(reference: Prepared, moving: Prepared, rotation: np.ndarray,
                          settings: AlignSettings) -> tuple[float, np.ndarray]:
    """The translational check as it was before issue 20 (|F|² recomputed per call)."""
    box = reference.box
    b = scipy.fft.rfftn(transform_volume(moving.volume, rotation))
    overlap = (reference.mask * align_module.rotate_mask(moving.mask, rotation,
                                                         moving.full_mask)
               * align_module._half_weights(box, settings.score_radius))
    a = reference.spectrum
    power = float(np.sum(overlap * np.abs(a) ** 2)) * float(np.sum(overlap * np.abs(b) ** 2))
    if power <= 0:
        return -1.0, np.zeros(3)
    cross = a * np.conj(b) * (overlap * np.where(overlap > 1.5, 0.5, 1.0))
    correlation = scipy.fft.irfftn(cross, s=(box,) * 3)
    shift, peak = align_module._shift_peak(correlation * box**3, settings.max_shift_voxels)
    return peak / math.sqrt(power), shift


def legacy_align_prepared(reference: Prepared, moving: Prepared, settings: AlignSettings
                          ) -> Alignment:
    """The whole search before issue 20: every peak checked on the full box."""
    best = (-math.inf, np.eye(3), np.zeros(3))
    for rotation in legacy_peaks(legacy_rotational_scores(reference, moving, settings),
                                 settings):
        score, shift = legacy_score_rotation(reference, moving, rotation, settings)
        if score > best[0]:
            best = (score, rotation, shift)
    return Alignment(rotation=best[1], shift_voxels=best[2], score=float(best[0]))


def errors(result, rotation: np.ndarray, shift: np.ndarray) -> tuple[float, float]:
    """(geodesic rotation error in degrees, largest per-axis shift error in voxels)."""
    return (rotation_angle_deg(result.rotation, rotation.T),
            float(np.abs(result.shift_voxels + rotation.T @ shift).max()))


def searches() -> dict:
    """name -> (settings, align_prepared function): today's search and the baseline."""
    return {"today": (AlignSettings(), align_prepared),
            "before issue 20": (AlignSettings(screen_peaks=False), legacy_align_prepared)}


def recovery(volume: np.ndarray, trials: int, snr: float | None, search: str,
             seed: int) -> str:
    settings, aligner = searches()[search]
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    particles, rotations, shifts = make_particles(volume, trials, snr, seed)
    reference = prepare(volume, None, settings)
    found = [errors(aligner(reference, prepare(p, mask, settings), settings), r, s)
             for p, r, s in zip(particles, rotations, shifts, strict=True)]
    angle = np.array([a for a, _ in found])
    shift = np.array([s for _, s in found])
    good = int(np.sum((angle <= 10) & (shift <= 1)))
    return (f"{good}/{trials} = {good / trials:.0%} within 10° and 1 voxel; rotation error "
            f"median {np.median(angle):.1f}°, 90th percentile {np.percentile(angle, 90):.1f}°, "
            f"max {angle.max():.1f}°; shift error median {np.median(shift):.2f} voxels")


def pose_quality(volume: np.ndarray, trials: int, snr: float, search: str, seed: int) -> str:
    """Correlation with the map of the noise-free particle moved by the pose found from the
    noisy one: symmetric complexes have several right answers, this scores them all."""
    settings, aligner = searches()[search]
    rng = np.random.default_rng(seed)
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    reference = prepare(volume, None, settings)
    correlations = []
    for _ in range(trials):
        rotation = Rotation.random(random_state=rng).as_matrix()
        shift = rng.uniform(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS, size=3)
        clean = transform_volume(volume, rotation, shift)
        noisy = clean + rng.normal(0, math.sqrt(clean.var() / snr), clean.shape)
        found = aligner(reference, prepare(apply_mask(noisy, mask), mask, settings), settings)
        moved = transform_volume(clean, found.rotation, found.shift_voxels)
        correlations.append(float(np.corrcoef(moved.ravel(), volume.ravel())[0, 1]))
    values = np.array(correlations)
    return (f"correlation with the map median {np.median(values):.3f}, min {values.min():.3f}, "
            f"{int(np.sum(values >= 0.8))}/{trials} >= 0.8")


def _process_worker(job) -> tuple[float, float, int]:
    """Prepare and align a chunk of particles in a forked process; (start, end, count)."""
    volume, particles, search = job
    settings, aligner = searches()[search]
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    reference = prepare(volume, None, settings)
    aligner(reference, prepare(particles[0], mask, settings), settings)  # warm the caches
    started = time.time()
    for particle in particles:
        aligner(reference, prepare(particle, mask, settings), settings)
    return started, time.time(), len(particles)


def _timings(volume: np.ndarray, particles: list[np.ndarray], search: str
             ) -> dict[str, float]:
    """Seconds of each way of running one search over ``particles`` (the reference prepared
    once, as in the census and the refinement)."""
    settings, aligner = searches()[search]
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    reference = prepare(volume, None, settings)
    aligner(reference, prepare(particles[0], mask, settings), settings)  # warm the caches
    seconds = {}
    started = time.perf_counter()
    prepared = [prepare(p, mask, settings) for p in particles]
    preparing = time.perf_counter() - started
    started = time.perf_counter()
    for particle in prepared:
        aligner(reference, particle, settings)
    seconds["one thread, both prepared once"] = time.perf_counter() - started
    seconds["one thread, preparing the moving volume"] = (
        seconds["one thread, both prepared once"] + preparing)
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(lambda particle: aligner(reference, particle, settings), prepared))
        seconds["two threads, both prepared once"] = time.perf_counter() - started
    half = len(particles) // 2
    jobs = [(volume, particles[:half], search), (volume, particles[half:], search)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        spans = pool.map(_process_worker, jobs)
    seconds["two processes, preparing the moving volume"] = (
        max(end for _, end, _ in spans) - min(start for start, _, _ in spans))
    return seconds


def speed(volume: np.ndarray, count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Alignments per second of each search and way of running it, the searches taking
    turns over ``rounds`` rounds of ``count`` alignments, so that both see the same load."""
    particles, _, _ = make_particles(volume, count, 0.1, seed=99)
    totals: dict[str, dict[str, float]] = {search: {} for search in searches()}
    for _ in range(rounds):
        for search in searches():
            for label, seconds in _timings(volume, particles, search).items():
                totals[search][label] = totals[search].get(label, 0.0) + seconds
    return {search: {label: rounds * count / seconds for label, seconds in found.items()}
            for search, found in totals.items()}


def super_fibonacci(count: int) -> np.ndarray:
    """(count, 3, 3) near-uniform rotations: the Super-Fibonacci spiral (Alexa 2022)."""
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    s = np.arange(count) + 0.5
    t = s / count
    r, big_r = np.sqrt(t), np.sqrt(1.0 - t)
    alpha, beta = 2 * np.pi * s / phi, 2 * np.pi * s / psi
    quaternions = np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta),
                            big_r * np.cos(beta)], axis=1)  # (x, y, z, w)
    return Rotation.from_quat(quaternions).as_matrix()


def covering(grid: np.ndarray, samples: int = 2000) -> tuple[float, float, float]:
    """(95th, 99th percentile, max) of the angle (degrees) from random rotations to the grid."""
    rng = np.random.default_rng(1)
    probes = Rotation.random(samples, random_state=rng).as_matrix()
    traces = np.einsum("pij,gij->pg", probes, grid)  # trace(P^T G)
    best = np.clip((traces.max(axis=1) - 1) / 2, -1, 1)
    angles = np.rad2deg(np.arccos(best))
    return (float(np.percentile(angles, 95)), float(np.percentile(angles, 99)),
            float(angles.max()))


def baseline(volume: np.ndarray, grid_size: int, timed_rotations: int, full: int,
             settings: AlignSettings, fast_rate: float) -> None:
    grid = super_fibonacci(grid_size)
    p95, p99, worst = covering(grid)
    print(f"  grid: {grid_size} rotations (Super-Fibonacci), distance of random rotations to "
          f"the grid: 95th percentile {p95:.1f}°, 99th {p99:.1f}°, max {worst:.1f}°")
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    particles, rotations, shifts = make_particles(volume, max(full, 1), 0.1, seed=7)
    reference = prepare(volume, None, settings)
    moving = prepare(particles[0], mask, settings)
    started = time.perf_counter()
    for rotation in grid[:timed_rotations]:
        score_rotation(reference, moving, rotation, settings)
    per_rotation = (time.perf_counter() - started) / timed_rotations
    seconds = per_rotation * grid_size
    print(f"  {1000 * per_rotation:.2f} ms per rotation (rotate, rotate mask, FFT, masked "
          f"cross-correlation), timed on {timed_rotations}: {seconds:.1f} s per alignment, "
          f"{1 / seconds:.3f} alignments/s (one process)")
    for index in range(full):
        moving = prepare(particles[index], mask, settings)
        started = time.perf_counter()
        best = max(((*score_rotation(reference, moving, rotation, settings), rotation)
                    for rotation in grid), key=lambda item: item[0])
        elapsed = time.perf_counter() - started
        angle = rotation_angle_deg(best[2], rotations[index].T)
        shift = float(np.abs(best[1] + rotations[index].T @ shifts[index]).max())
        print(f"  full grid search {index + 1}: {elapsed:.1f} s, rotation error {angle:.1f}°, "
              f"shift error {shift:.2f} voxels (SNR 0.1)")
    print(f"speed ratio (fast rotational matching / grid search, one process): "
          f"{fast_rate * seconds:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="random poses per noise level")
    parser.add_argument("--structure", default="1u6g",
                        help="structure ID in $TOMOSIFT_STRUCTURE_DIRS (asymmetric by default)")
    parser.add_argument("--symmetric", default="1bxn",
                        help="a symmetric complex whose poses are judged by map correlation")
    parser.add_argument("--speed", type=int, default=40,
                        help="alignments per search and round timed for speed")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the two searches take turns")
    parser.add_argument("--grid", type=int, default=7500,
                        help="rotations of the baseline grid search")
    parser.add_argument("--baseline-rotations", type=int, default=200,
                        help="rotations timed for the baseline's time per rotation")
    parser.add_argument("--baseline-full", type=int, default=1,
                        help="complete baseline grid searches run (each takes tens of seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = find_in_dirs(args.structure, search_dirs())
    if path is None:
        parser.error(f"{args.structure} not found; set TOMOSIFT_STRUCTURE_DIRS")
    volume = make_density(path, DensitySettings())[0]
    settings = AlignSettings()
    print(machine_line())
    print(f"map: {args.structure}, {volume.shape[0]}³ voxels; wedge ±{TILT_DEG:g}°; "
          f"settings: {settings}")
    print("(a) recovery, wedge-masked particle onto the unmasked map")
    for search in searches():
        for snr in (None, 0.1):
            label = "noise-free" if snr is None else f"SNR {snr:g}"
            print(f"  {search}, {label}: "
                  f"{recovery(volume, args.trials, snr, search, args.seed)}")
    symmetric_path = find_in_dirs(args.symmetric, search_dirs())
    if symmetric_path is not None:
        symmetric = make_density(symmetric_path, DensitySettings())[0]
        for search in searches():
            print(f"  {search}, {args.symmetric} (symmetric), SNR 0.1: "
                  f"{pose_quality(symmetric, args.trials, 0.1, search, args.seed)}")
    print("(b) speed (alignments per second)")
    rates = speed(volume, args.speed, args.rounds)
    for label in rates["today"]:
        today, before = rates["today"][label], rates["before issue 20"][label]
        print(f"  {label}: {today:.1f} today ({1000 / today:.1f} ms each), {before:.1f} "
              f"before issue 20; ratio {today / before:.2f}x")
    print("(c) baseline: constrained correlation at every rotation of a uniform grid")
    baseline(volume, args.grid, args.baseline_rotations, args.baseline_full, settings,
             rates["today"]["one thread, both prepared once"])


if __name__ == "__main__":
    main()
