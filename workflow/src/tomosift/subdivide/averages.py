"""Reference-free averages of the largest clusters: a first look at what each subset holds.

Each chosen cluster's average is :func:`tomosift.discovery.classify3d.classify` with one
class (gold-standard half-sets, :mod:`tomosift.discovery.refine`) on a seeded subsample of at
most ``max_members`` members, the particles made bright as
:func:`tomosift.discovery.particles.from_dataset` does, with what each observed (its wedge,
CTF or Fourier weights). Beside each average go its two half-maps, and ``resolution.tsv``
gives every average's half-set resolution at FSC 0.143.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomosift.errors import TomosiftError

AVERAGE_ITERATIONS = 2


def chosen_clusters(table_clusters: np.ndarray, clusters: int | Sequence[int]) -> list[int]:
    """Cluster numbers: the ``clusters`` largest (an int; ties to the smaller number) or the
    numbers listed."""
    numbers, sizes = np.unique(table_clusters, return_counts=True)
    if isinstance(clusters, int | np.integer):
        order = sorted(zip(numbers.tolist(), sizes.tolist(), strict=True),
                       key=lambda item: (-item[1], item[0]))
        return [number for number, _ in order[: int(clusters)]]
    missing = sorted(set(int(c) for c in clusters) - set(numbers.tolist()))
    if missing:
        raise TomosiftError(f"no cluster {', '.join(str(m) for m in missing)} in the table "
                            f"(clusters {numbers.min()}..{numbers.max()})")
    return [int(c) for c in clusters]


def seeded_members(members: np.ndarray, max_members: int | None, seed: int, number: int
                   ) -> np.ndarray:
    """At most ``max_members`` of ``members`` (sorted), drawn with the seed and the subset's
    number; all of them when fewer or ``max_members`` is None."""
    if max_members is None or len(members) <= max_members:
        return np.sort(members)
    rng = np.random.default_rng([seed, number])
    return np.sort(rng.choice(members, size=max_members, replace=False))


def average_members(data_path: str | os.PathLike, members: np.ndarray, iterations: int,
                    seed: int, threads: int | None, progress: bool):
    """Reference-free average (one class, gold-standard half-sets) of dataset particles
    ``members``: (:class:`~tomosift.discovery.classify3d.ClassificationResult`, voxel size
    in nm)."""
    from tomosift.classify.devices import limited_threads
    from tomosift.discovery.classify3d import ClassifySettings, classify
    from tomosift.discovery.particles import from_dataset

    particles = from_dataset(data_path, members)
    low, high = particles.tilt_range_deg
    settings = ClassifySettings(classes=1, iterations=iterations, tilt_min_deg=low,
                                tilt_max_deg=high, seed=seed, workers=threads or 1)
    with limited_threads(threads):
        result = classify(particles.volumes, settings, progress=progress,
                          observations=particles.observations())
    return result, particles.voxel_size_nm


def cluster_averages(data_path: str | os.PathLike, clusters_tsv: str | os.PathLike,
                     out_dir: str | os.PathLike, clusters: int | Sequence[int] = 3,
                     max_members: int = 50, iterations: int = AVERAGE_ITERATIONS, seed: int = 1,
                     threads: int | None = None, progress: bool = True) -> list[Path]:
    """Write ``out_dir/averages/cluster_<ccc>.mrc`` (the data's voxel size), its half-maps
    ``cluster_<ccc>_half1.mrc`` and ``_half2.mrc``, ``averages/resolution.tsv`` (cluster,
    members averaged, half-set resolution at FSC 0.143 in nm) for the chosen clusters of a
    ``clusters.tsv``, and ``out_dir/averages.png`` (central slices); an average newer than the
    table is kept. Returns the averages' MRC paths."""
    import pandas as pd

    from tomosift.discovery.fsc import compute_fsc, soft_sphere_mask
    from tomosift.io import read_mrc, write_mrc, write_text
    from tomosift.plots import density_montage

    clusters_tsv = Path(clusters_tsv)
    if not clusters_tsv.is_file():
        raise TomosiftError(f"{clusters_tsv}: cluster table not found")
    if max_members < 1:
        raise TomosiftError(f"max_members must be >= 1, got {max_members}")
    table = pd.read_csv(clusters_tsv, sep="\t")
    indices = table["index"].to_numpy(dtype=np.int64)
    numbers = table["cluster"].to_numpy(dtype=np.int64)
    out = Path(out_dir)
    paths, volumes, names, voxel = [], [], [], None
    rows = ["cluster\tmembers_averaged\tresolution_0143_nm"]
    for number in chosen_clusters(numbers, clusters):
        path = out / "averages" / f"cluster_{number:03d}.mrc"
        halves = [path.with_name(f"{path.stem}_half{h}.mrc") for h in (1, 2)]
        members = seeded_members(indices[numbers == number], max_members, seed, number)
        if all(p.is_file() and p.stat().st_mtime >= clusters_tsv.stat().st_mtime
               for p in (path, *halves)):
            volume, voxel = read_mrc(path)
            half_maps = [read_mrc(p)[0] for p in halves]
        else:
            result, voxel = average_members(data_path, members, iterations, seed, threads,
                                            progress)
            volume = result.averages[0]
            # one member: no half-sets; its "half-maps" are itself (the FSC then says 2 voxels)
            half_maps = (list(result.half_maps[0]) if result.half_maps is not None
                         else [volume, volume])
            for half_path, half in zip(halves, half_maps, strict=True):
                write_mrc(half_path, half, voxel)
            write_mrc(path, volume, voxel)
        box = volume.shape[0]
        resolution = (compute_fsc(half_maps[0], half_maps[1], voxel, soft_sphere_mask(box))
                      .resolution_0143_nm if len(members) > 1 else float("nan"))
        rows.append(f"{number}\t{len(members)}\t{resolution:.3f}")
        paths.append(path)
        volumes.append(volume)
        names.append(f"cluster {number} ({resolution:.1f} nm)")
    if volumes:
        write_text(out / "averages" / "resolution.tsv", "\n".join(rows) + "\n")
        density_montage(names, volumes, voxel, out / "averages.png")
    return paths
