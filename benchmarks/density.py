"""Seconds to make each density map (40³ at 0.92 nm, 3x oversampled, Fourier-cropped).

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps python benchmarks/density.py
"""

from __future__ import annotations

import time

from tomosift.density import DensitySettings, make_density
from tomosift.errors import TomosiftError
from tomosift.structures import find_in_dirs, search_dirs

NAMES = ("1bxn 1qvr 1s3x 1u6g 2cg9 3cf3 3d2f 3gl1 3h84 3qm1 3hhb 4v1w 3jb9 4v4r_30s 4v5d "
         "6qt9 4v94 4cr2 5mrc 2uv8 6utj 3ipm").split()


def main() -> None:
    dirs = search_dirs()
    print(f"{'name':10s} {'atoms':>8s} {'mass kDa':>9s} {'gaussian s':>10s} {'electron s':>10s}")
    for name in NAMES:
        path = find_in_dirs(name, dirs)
        assembly = "none" if name == "6qt9" else "first"
        timings = []
        row = None
        for method in ("gaussian", "electron"):
            settings = DensitySettings(method=method, assembly=assembly)
            started = time.perf_counter()
            try:
                _, row = make_density(path, settings)
            except TomosiftError as exc:
                print(f"{name:10s} error: {exc}")
                break
            timings.append(time.perf_counter() - started)
            if row.kind == "map":
                timings.append(float("nan"))
                break
        if row is None or len(timings) < 2:
            continue
        atoms = f"{row.atoms:8d}" if row.atoms else f"{'map':>8s}"
        mass = f"{row.mass_kda:9.0f}" if row.mass_kda else f"{'-':>9s}"
        print(f"{name:10s} {atoms} {mass} {timings[0]:10.2f} {timings[1]:10.2f}")


if __name__ == "__main__":
    main()
