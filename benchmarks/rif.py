"""Seconds per 40³ subtomogram of rotation-invariant feature extraction, on one CPU thread.

    python benchmarks/rif.py [--batch 512] [--repeats 3]

Xu et al. 2017 report 0.1 s per subtomogram for their RIF extraction; the ratio printed is
0.1 s divided by ours.
"""

from __future__ import annotations

import os

# One thread for BLAS/OpenMP, set before numpy is imported.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from machine import machine_line  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from tomosift.classify.rif import RifSettings, rif_features  # noqa: E402

PAPER_SECONDS_PER_SUBTOMOGRAM = 0.1
BOX_VOXELS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="subtomograms per timed call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (best is reported)")
    args = parser.parse_args()

    settings = RifSettings()
    rng = np.random.default_rng(0)
    volumes = rng.standard_normal((args.batch, BOX_VOXELS, BOX_VOXELS, BOX_VOXELS),
                                  dtype=np.float32)
    print(machine_line())
    print(f"settings: {settings}, F = {settings.n_features(BOX_VOXELS)} features, "
          f"batch {args.batch} x {BOX_VOXELS}³ float32, 1 thread")
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        rif_features(volumes[:64], settings)  # warm-up: builds and caches the shell operators
        print(f"warm-up (operator construction + 64 volumes): "
              f"{time.perf_counter() - started:.2f} s")
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            rif_features(volumes, settings)
            timings.append((time.perf_counter() - started) / args.batch)
    best = min(timings)
    print(f"seconds per subtomogram: {best:.2e} (best of {args.repeats}; all: "
          + ", ".join(f"{t:.2e}" for t in timings) + ")")
    print(f"paper (Xu et al. 2017): {PAPER_SECONDS_PER_SUBTOMOGRAM} s per subtomogram; "
          f"speed-up {PAPER_SECONDS_PER_SUBTOMOGRAM / best:.0f}x")


if __name__ == "__main__":
    main()
