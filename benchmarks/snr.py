"""How close the simulated SNR is to its target: the Frank & Al-Ali table.

For each reconstruction mode and noise stage, and each target SNR, simulates pairs of
subtomograms with the same particle and pose and independent noise (4 structures, random
poses, ±60° at 2°, full CTF and MTF) and prints the mean estimate rho / (1 - rho) over the
pairs, its standard error and its ratio to the target.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps python benchmarks/snr.py
"""

from __future__ import annotations

import argparse
import platform

import numpy as np

from tomosift.density import DensitySettings, make_density
from tomosift.simulate.poses import pose_rng, random_pose
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum
from tomosift.snr import frank_al_ali_snr, summarise_pair_estimates
from tomosift.structures import find_local_structure, search_dirs

STRUCTURES = ("1bxn", "3hhb", "1qvr", "3gl1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=24, help="pairs per structure and target")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.1, 0.05, 0.03])
    args = parser.parse_args()
    spectra = [
        padded_spectrum(make_density(find_local_structure(name, search_dirs(), None),
                                     DensitySettings())[0])
        for name in STRUCTURES
    ]
    print(f"machine: {platform.machine()}, {platform.processor()}")
    print(f"{len(STRUCTURES)} structures x {args.pairs} pairs per target, ±60° at 2°")
    print("mode     noise_stage  target   mean_estimate  standard_error  ratio")
    for mode, stage in (("fourier", "before_ctf"), ("fourier", "after_ctf"),
                        ("wbp", "before_ctf"), ("wedge", "before_ctf")):
        geometry = TiltSeriesGeometry(SimulationSettings(reconstruction=mode, noise_stage=stage))
        for target in args.targets:
            rng = np.random.default_rng(round(target * 1e4))
            estimates = []
            for s, spectrum in enumerate(spectra):
                for index in range(args.pairs):
                    rotation, shift = random_pose(pose_rng(s, index), 4.0)
                    first, _, _ = geometry.particle(spectrum, rotation, shift, target, rng)
                    second, _, _ = geometry.particle(spectrum, rotation, shift, target, rng)
                    estimates.append(frank_al_ali_snr(first, second))
            summary = summarise_pair_estimates(np.array(estimates))
            print(f"{mode:8s} {stage:12s} {target:6g}   {summary['mean_snr']:13.4f}  "
                  f"{summary['standard_error']:14.4f}  {summary['mean_snr'] / target:5.3f}")


if __name__ == "__main__":
    main()
