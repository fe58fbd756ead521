"""Simulator speed and memory, measured side by side in one run.

Prints subtomograms per second for 40³ voxels, ±60° at 2°, full physics (CTF, MTF, noise,
direct Fourier inversion), through the path datasets use (``ParticleSimulator``): the paper's
setting in one process and in two at once (two shard jobs, as Snakemake runs them on 2 cores);
the same with the signal reconstructed in the subtomogram's own box (no padding: the wrapping
simulator before issue 10) for the cost of the padding; the realistic mode (dose noise, a
defocus per particle, up to 4 neighbours, ice); the straightforward real-space pipeline
(rotate, project, back-project) on the same particles; the peak memory of shard jobs of
different sizes; and what the paper's full grid costs at the measured rate.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures python benchmarks/simulate.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from tomosift.datasets import DatasetPlan, ParticleSimulator
from tomosift.density import DensitySettings, make_density
from tomosift.simulate.ctf import Optics
from tomosift.simulate.poses import pose_rng, random_pose
from tomosift.simulate.realspace import simulate_particle_realspace
from tomosift.simulate.specimen import Crowding, Ice
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry
from tomosift.structures import find_in_dirs, search_dirs

STRUCTURES = ("1bxn", "3hhb", "1qvr", "3gl1")
REALISTIC = {"settings": SimulationSettings(optics=Optics(defocus_range_um=(3.0, 6.0),
                                                          b_factor_a2=200.0),
                                            ice=Ice(thickness_nm=150, solvent_contrast=0.64)),
             "plan": {"dose_e_per_a2": 80.0, "crowding": Crowding(max_neighbours=4)}}


def load_maps() -> list[np.ndarray]:
    dirs = search_dirs()
    return [make_density(find_in_dirs(name, dirs), DensitySettings())[0] for name in STRUCTURES]


def fourier_rate(maps, count: int, seed: int = 0, mode: str = "paper") -> tuple[float, int]:
    """(subtomograms per second, signal box) of the dataset simulator, set-up included.

    ``mode``: ``paper`` (SNR 0.1), ``unpadded`` (the same in the subtomogram's own box),
    ``realistic`` (see REALISTIC)."""
    started = time.perf_counter()
    settings, options = SimulationSettings(), {"snr": 0.1}
    if mode == "realistic":
        settings, options = REALISTIC["settings"], REALISTIC["plan"]
    plan = DatasetPlan(STRUCTURES, per_class=count, seed=seed, **options)
    simulator = ParticleSimulator.prepare(maps, plan, settings)
    if mode == "unpadded":
        geometry = TiltSeriesGeometry(replace(simulator.settings, signal_box_voxels=40))
        simulator = ParticleSimulator(geometry, simulator.classes, plan)
    with threadpool_limits(limits=1):
        for index in range(count):
            simulator.particle(index, index % len(maps))
    return count / (time.perf_counter() - started), simulator.geometry.signal_box_voxels


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
    return fourier_rate(maps, count, seed)[0]


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
    one, box = fourier_rate(maps, args.particles)
    unpadded, _ = fourier_rate(maps, args.particles, mode="unpadded")
    realistic, realistic_box = fourier_rate(maps, args.particles // 2, mode="realistic")
    two = two_process_rate(maps, args.particles)
    slow = realspace_rate(maps, args.realspace_particles)
    print(f"fourier simulator, paper setting, signal box {box}³, 1 process: {one:8.1f} "
          "subtomograms/s")
    print(f"  the same in the unpadded 40³ box (wraps around), 1 process: {unpadded:8.1f} "
          f"subtomograms/s; padding costs {unpadded / one:.2f}x")
    print(f"fourier simulator, paper setting, 2 processes: {two:8.1f} subtomograms/s")
    print(f"realistic mode (dose, defocus range, <= 4 neighbours, ice), signal box "
          f"{realistic_box}³, 1 process: {realistic:8.1f} subtomograms/s")
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
