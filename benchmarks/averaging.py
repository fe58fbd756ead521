"""Reference-free averaging on realistic particles: does the average fit noise?

The issue-18 comparison on particles the project simulates: 40 particles of the 30S subunit
(4v4r_30s) with detector dose noise, a defocus per particle (3-6 µm) with the CTF, a B-factor
of 200 Å², 150 nm of ice, up to 4 neighbours in the box, ±60°, 1.2 nm voxels, 32³ boxes. Each
average is aligned onto the true map and scored by the mean FSC over Fourier shells 2-5:

- the known-pose average (the particles averaged with their true poses);
- the plain mean of the particles, unaligned, then aligned as one volume;
- ``classify(..., classes=1)``: tomosift's reference-free average, with each particle's CTF
  when this version of tomosift takes ``observations``.

Run it with any version of tomosift on the path (the "before" figures in docs/benchmarks.md
come from this script in a worktree of the commit before issue 18, part 1):

    python benchmarks/averaging.py --doses 100 20 8 4 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import inspect
import time

import numpy as np

from tomosift.datasets import DatasetPlan, ParticleSimulator
from tomosift.density import DensitySettings, make_density
from tomosift.discovery.align import align
from tomosift.discovery.average import average
from tomosift.discovery.classify3d import ClassifySettings, classify
from tomosift.discovery.fsc import fsc_curve
from tomosift.discovery.rotations import transform_volume
from tomosift.simulate.ctf import Optics
from tomosift.simulate.specimen import Crowding, Ice
from tomosift.simulate.tomography import SimulationSettings
from tomosift.structures import find_in_dirs, search_dirs

VOXEL_NM, BOX, COUNT = 1.2, 32, 40


def low_shell_fsc(truth: np.ndarray, volume: np.ndarray, aligned: bool = True) -> float:
    """Mean FSC over shells 2-5 against the truth, after aligning the volume onto it."""
    if aligned:
        found = align(truth, volume, None, None)
        volume = transform_volume(volume, found.rotation, found.shift_voxels)
    return float(fsc_curve(truth, volume)[1][2:6].mean())


def simulate(truth: np.ndarray, dose: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray, float]:
    optics = Optics(defocus_range_um=(3.0, 6.0), b_factor_a2=200)
    settings = SimulationSettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM, tilt_max_deg=60,
                                  tilt_step_deg=3, optics=optics,
                                  ice=Ice(thickness_nm=150, solvent_contrast=0.64),
                                  polarity="white")
    plan = DatasetPlan(("4v4r_30s",), per_class=COUNT, dose_e_per_a2=dose, empty_class=False,
                       max_shift_voxels=3,
                       crowding=Crowding(max_neighbours=4, min_gap_nm=0.5, max_gap_nm=3.0))
    simulator = ParticleSimulator.prepare([truth], plan, settings)
    records = [simulator.particle(i, 0)[:2] for i in range(COUNT)]
    volumes = np.stack([v for v, _ in records]).astype(np.float32)
    rotations = np.stack([r["rotations"] for _, r in records])
    shifts = np.stack([r["shifts_voxels"] for _, r in records])
    defocus = np.array([r["defocus_um"] for _, r in records])
    snr = float(np.mean([r["snr"] for _, r in records]))
    return volumes, rotations, shifts, defocus, snr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doses", type=float, nargs="+", default=[100, 20, 8, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes per average, when this tomosift has them (same bytes)")
    args = parser.parse_args()
    path = find_in_dirs("4v4r_30s", search_dirs())
    truth = make_density(path, DensitySettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM,
                                               resolution_nm=VOXEL_NM))[0]
    takes_observations = "observations" in inspect.signature(classify).parameters
    print("dose_e_per_a2\tsnr\tknown_pose\tplain_mean\tseed\treference_free\tratio_to_known"
          "\tseconds")
    for dose in args.doses:
        volumes, rotations, shifts, defocus, snr = simulate(truth, dose)
        known, _ = average(volumes, np.transpose(rotations, (0, 2, 1)),
                           -np.einsum("nji,nj->ni", rotations, shifts))
        known_score = low_shell_fsc(truth, known, aligned=False)
        plain = low_shell_fsc(truth, volumes.mean(0))
        for seed in args.seeds:
            settings = ClassifySettings(classes=1, iterations=args.iterations, seed=seed)
            if "workers" in inspect.signature(ClassifySettings).parameters:
                settings = ClassifySettings(classes=1, iterations=args.iterations, seed=seed,
                                            workers=args.workers)
            kwargs = {}
            if takes_observations:
                from tomosift.discovery.refine import Observations

                kwargs["observations"] = Observations(VOXEL_NM, -60, 60, defocus, Optics())
            start = time.perf_counter()
            result = classify(volumes, settings, progress=False, **kwargs)
            seconds = time.perf_counter() - start
            score = low_shell_fsc(truth, result.averages[0])
            print(f"{dose:g}\t{snr:.4f}\t{known_score:.3f}\t{plain:.3f}\t{seed}\t{score:.3f}\t"
                  f"{score / known_score:.3f}\t{seconds:.1f}", flush=True)


if __name__ == "__main__":
    main()
