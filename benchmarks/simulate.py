"""Simulator speed and memory, measured side by side in one run.

Prints subtomograms per second for 40³ voxels, ±60° at 2°, full physics (CTF, MTF, noise,
direct Fourier inversion): one process, and two processes at once (two shard jobs, as
Snakemake runs them on 2 cores); the straightforward real-space pipeline (rotate, project,
back-project) on the same particles; their ratio; the peak memory of shard jobs of different
sizes; and what the paper's full grid costs at the measured rate.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures python benchmarks/simulate.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tomosift.density import DensitySettings, make_density
from tomosift.simulate.poses import pose_rng, random_pose
from tomosift.simulate.realspace import simulate_particle_realspace
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum
from tomosift.structures import find_in_dirs, search_dirs

STRUCTURES = ("1bxn", "3hhb", "1qvr", "3gl1")


def load_maps() -> list[np.ndarray]:
    dirs = search_dirs()
    return [make_density(find_in_dirs(name, dirs), DensitySettings())[0] for name in STRUCTURES]


def fourier_rate(maps, count: int, seed: int = 0) -> float:
    """Subtomograms per second of the Fourier simulator (geometry set-up included)."""
    started = time.perf_counter()
    geometry = TiltSeriesGeometry(SimulationSettings())
    spectra = [padded_spectrum(m) for m in maps]
    for index in range(count):
        rotation, shift = random_pose(pose_rng(seed, index), 4.0)
        geometry.particle(spectra[index % len(spectra)], rotation, shift, 0.1,
                          np.random.default_rng([seed, index]))
    return count / (time.perf_counter() - started)


def realspace_rate(maps, count: int) -> float:
    settings = SimulationSettings()
    started = time.perf_counter()
    for index in range(count):
        rotation, shift = random_pose(pose_rng(0, index), 4.0)
        simulate_particle_realspace(maps[index % len(maps)], rotation, shift, settings, 1.0,
                                    np.random.default_rng(index))
    return count / (time.perf_counter() - started)


def _worker(args) -> float:
    maps, count, seed = args
    return fourier_rate(maps, count, seed)


def two_process_rate(maps, count_each: int) -> float:
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_worker, [(maps, count_each, 1), (maps, count_each, 2)])
    return 2 * count_each / (time.perf_counter() - started)


def shard_peak_memory_mb(n_particles: int) -> float:
    """Peak RSS (MB) of a fresh process that simulates a shard of ``n_particles`` to disk."""
    code = f"""
import resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from simulate import load_maps
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.simulate.tomography import SimulationSettings
maps = load_maps()
plan = DatasetPlan({STRUCTURES!r}, per_class={n_particles} // 5 + 1, snr=0.1)
with tempfile.TemporaryDirectory() as folder:
    simulate_shard(maps, plan, SimulationSettings(), 0, {n_particles}, Path(folder) / "s.h5",
                   progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=400)
    parser.add_argument("--realspace-particles", type=int, default=12)
    args = parser.parse_args()
    maps = load_maps()
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{multiprocessing.cpu_count()} cores, Python {platform.python_version()}")
    one = fourier_rate(maps, args.particles)
    two = two_process_rate(maps, args.particles)
    slow = realspace_rate(maps, args.realspace_particles)
    print(f"fourier simulator, 1 process:   {one:8.1f} subtomograms/s")
    print(f"fourier simulator, 2 processes: {two:8.1f} subtomograms/s")
    print(f"real-space pipeline, 1 process: {slow:8.2f} subtomograms/s")
    print(f"speed-up (1 process vs real space): {one / slow:.0f}x")
    for size in (100, 400):
        peak = shard_peak_memory_mb(size)
        print(f"peak memory of a {size:4d}-subtomogram shard job: {peak:.0f} MB")
    paper = 15 * 23000
    print(f"paper grid ({paper} subtomograms) on this machine at {two:.0f}/s: "
          f"{paper / two / 60:.0f} min")


if __name__ == "__main__":
    main()
