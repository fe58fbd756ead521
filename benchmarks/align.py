"""Accuracy and speed of subtomogram alignment over all of SO(3) under a ±60° missing wedge.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps python benchmarks/align.py \
        [--trials 40] [--structure 1u6g] [--speed 60] [--baseline-rotations 200]

Prints (a) the recovery rate (geodesic error <= 10° and shift error <= 1 voxel per axis) of
``--trials`` random poses (uniform rotation, shift uniform in ±3 voxels per axis) of a 40³
density map, wedge-masked, aligned back to the unmasked map, noise-free and at SNR 0.1
(white noise of variance signal variance / 0.1 added before masking); (b) alignments per
second, one process and two processes; (c) the same for a plain grid search (constrained
correlation with an FFT translation search at every rotation of a uniform grid whose
covering radius is about 10°) and the speed ratio. BLAS/OpenMP run one thread per process.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from machine import machine_line  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from tomosift.density import DensitySettings, make_density  # noqa: E402
from tomosift.discovery.align import (  # noqa: E402
    AlignSettings,
    align,
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


def errors(result, rotation: np.ndarray, shift: np.ndarray) -> tuple[float, float]:
    """(geodesic rotation error in degrees, largest per-axis shift error in voxels)."""
    return (rotation_angle_deg(result.rotation, rotation.T),
            float(np.abs(result.shift_voxels + rotation.T @ shift).max()))


def recovery(volume: np.ndarray, trials: int, snr: float | None, settings: AlignSettings,
             seed: int) -> str:
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    particles, rotations, shifts = make_particles(volume, trials, snr, seed)
    reference = prepare(volume, None, settings)
    found = [errors(align_prepared(reference, prepare(p, mask, settings), settings), r, s)
             for p, r, s in zip(particles, rotations, shifts, strict=True)]
    angle = np.array([a for a, _ in found])
    shift = np.array([s for _, s in found])
    good = int(np.sum((angle <= 10) & (shift <= 1)))
    return (f"{good}/{trials} = {good / trials:.0%} within 10° and 1 voxel; rotation error "
            f"median {np.median(angle):.1f}°, 90th percentile {np.percentile(angle, 90):.1f}°, "
            f"max {angle.max():.1f}°; shift error median {np.median(shift):.2f} voxels")


def _throughput_worker(job) -> tuple[float, float, int]:
    """Align a chunk of particles in a fresh process; (start, end, count) wall clock."""
    volume, particles, settings = job
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    align(volume, particles[0], None, mask, settings)  # warm the caches
    started = time.time()
    for particle in particles:
        align(volume, particle, None, mask, settings)
    return started, time.time(), len(particles)


def speed(volume: np.ndarray, count: int, settings: AlignSettings) -> float:
    mask = wedge_mask(volume.shape[0], -TILT_DEG, TILT_DEG)
    particles, _, _ = make_particles(volume, count, 0.1, seed=99)
    started = time.perf_counter()
    align(volume, particles[0], None, mask, settings)
    print(f"  warm-up (shell operators, Wigner d matrices): {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    for particle in particles:
        align(volume, particle, None, mask, settings)
    single = count / (time.perf_counter() - started)
    print(f"  one process, align() (prepares both volumes): {single:.1f} alignments/s "
          f"({1000 / single:.1f} ms each)")
    reference = prepare(volume, None, settings)
    prepared = [prepare(p, mask, settings) for p in particles]
    started = time.perf_counter()
    for particle in prepared:
        align_prepared(reference, particle, settings)
    reuse = count / (time.perf_counter() - started)
    print(f"  one process, align_prepared() (both prepared once, as in classification): "
          f"{reuse:.1f} alignments/s ({1000 / reuse:.1f} ms each)")
    half = count // 2
    jobs = [(volume, particles[:half], settings), (volume, particles[half:], settings)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        spans = pool.map(_throughput_worker, jobs)
    total = sum(n for _, _, n in spans)
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    print(f"  two processes, align(): {total / wall:.1f} alignments/s")
    return single


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
    parser.add_argument("--speed", type=int, default=60, help="alignments timed for speed")
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
    for snr in (None, 0.1):
        label = "noise-free" if snr is None else f"SNR {snr:g}"
        print(f"  {label}: {recovery(volume, args.trials, snr, settings, args.seed)}")
    print("(b) speed, fast rotational matching")
    rate = speed(volume, args.speed, settings)
    print("(c) baseline: constrained correlation at every rotation of a uniform grid")
    baseline(volume, args.grid, args.baseline_rotations, args.baseline_full, settings, rate)


if __name__ == "__main__":
    main()
