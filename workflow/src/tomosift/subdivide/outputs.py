"""What subdivision writes: the cluster table, the summary, RELION subsets and two plots.

STAR subsets (RELION 5, :func:`tomosift.tomograms.relion.write_particles_star`): an optics
block with the subtomograms' voxel size and box, and one row per particle with
``rlnClassNumber`` = its cluster (1-based). When the dataset has a ``particles/`` group
(particles extracted from, or imported with, tomograms) the rows carry ``rlnTomoName`` and
``rlnTomoParticleName`` (tomo/index + 1) unless every name is empty, ``rlnCoordinateX/Y/Z``
(tomogram voxels, copied) when every particle's is known, ``rlnCenteredCoordinate*Angst`` (the
stored ``particles/centered_angst``, else computed from the coordinates and the tomograms'
sizes) when every particle's is known, the angles when all are known and ``rlnImageName`` when
every particle has one: no column holds a missing value, which RELION could not parse. A
simulated dataset has no positions: its rows name the particle by ``tomosiftIndex`` (the
dataset index) only, and the summary says so. Every row also has ``tomosiftIndex``,
``tomosiftClusterDistance`` and, when the truth is known, ``tomosiftTrueClass``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.errors import TomosiftError
from tomosift.io import atomic_path

PARTICLES_GROUP = "particles"
NO_POSITIONS_NOTE = ("the dataset has no particles/ group (simulated subtomograms): the STAR "
                     "files name particles by tomosiftIndex (dataset index), without coordinates")
UNKNOWN_POSITIONS_NOTE = ("the dataset's particles/ group holds no positions (imported without "
                          "coordinates): the STAR files name particles by tomosiftIndex and their "
                          "images, without coordinates")


def particle_metadata(data_path: str | os.PathLike) -> dict | None:
    """The ``particles/`` group of a dataset (tomo names, coordinates, tomogram sizes, angles,
    image names, tomogram voxel size), or None when it has none."""
    from tomosift.datasets import open_dataset

    with open_dataset(data_path) as h5:
        if PARTICLES_GROUP not in h5:
            return None
        group = h5[PARTICLES_GROUP]
        n = len(h5["volumes"])

        def text(name: str) -> np.ndarray:
            if name not in group:
                return np.full(n, "", dtype=object)
            return np.array([v.decode() if isinstance(v, bytes) else str(v)
                             for v in group[name][()]], dtype=object)

        meta = {"tomo_name": text("tomo_name"), "image_name": text("image_name")}
        for name in ("coordinates_voxels", "tomogram_size_xyz", "angles_deg", "centered_angst"):
            meta[name] = (np.asarray(group[name][()], dtype=np.float64) if name in group
                          else np.full((n, 3), np.nan))
        voxel = group.attrs.get("tomogram_voxel_size_nm", h5.attrs.get("voxel_size_nm"))
        meta["tomogram_voxel_size_nm"] = float(voxel)
    if len(meta["tomo_name"]) != n or meta["coordinates_voxels"].shape != (n, 3):
        raise TomosiftError(f"{data_path}: particles/ does not describe its {n} subtomograms")
    return meta


def has_positions(meta: dict | None) -> bool:
    """Whether every particle of a :func:`particle_metadata` has a finite position (voxel or
    centred coordinates)."""
    if meta is None:
        return False
    return bool(np.all(np.isfinite(meta["coordinates_voxels"]))
                or np.all(np.isfinite(meta["centered_angst"])))


def subsets_note(meta: dict | None) -> str:
    """The summary's line on what the STAR subsets say of each particle."""
    if meta is None:
        return f"STAR subsets: {NO_POSITIONS_NOTE}"
    if not has_positions(meta):
        return f"STAR subsets: {UNKNOWN_POSITIONS_NOTE}"
    return "STAR subsets: positions, angles and images from the dataset's particles/ group"


def particles_table(indices: np.ndarray, clusters: np.ndarray, distances: np.ndarray,
                    meta: dict | None, true_classes: Sequence[str] | None) -> pd.DataFrame:
    """The RELION particles table of every particle (rows in dataset-index order); columns
    of unknown values are left out (see the module docstring)."""
    from tomosift.tomograms.relion import CENTERED_COLUMNS, COORDINATE_COLUMNS, particle_table

    indices = np.asarray(indices, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    extra: dict = {}
    names = [] if meta is None else list(meta["tomo_name"][indices])
    named = any(names)
    if meta is not None:
        if all(meta["image_name"][indices]):
            extra["rlnImageName"] = list(meta["image_name"][indices])
        if named:
            extra["rlnTomoParticleName"] = [f"{t}/{i + 1}"
                                            for t, i in zip(names, indices, strict=True)]
    extra["tomosiftIndex"] = indices
    extra["tomosiftClusterDistance"] = np.round(np.asarray(distances, dtype=np.float64), 6)
    if true_classes is not None:
        extra["tomosiftTrueClass"] = list(true_classes)
    if meta is None:
        return pd.DataFrame({"rlnClassNumber": clusters, "rlnOpticsGroup": 1, **extra})
    angles = meta["angles_deg"][indices]
    coordinates = meta["coordinates_voxels"][indices]
    table = particle_table(names, coordinates, meta["tomogram_size_xyz"][indices],
                           meta["tomogram_voxel_size_nm"],
                           angles if np.all(np.isfinite(angles)) else None, clusters, extra)
    stored = meta["centered_angst"][indices]
    computed = table[list(CENTERED_COLUMNS)].to_numpy(dtype=np.float64)
    sizes_known = np.all(meta["tomogram_size_xyz"][indices] > 0)
    dropped = []
    if np.all(np.isfinite(stored)):
        table[list(CENTERED_COLUMNS)] = stored
    elif not (sizes_known and np.all(np.isfinite(computed))):
        dropped += list(CENTERED_COLUMNS)
    if not np.all(np.isfinite(coordinates)):
        dropped += list(COORDINATE_COLUMNS)
    if not named:
        dropped.append("rlnTomoName")
    return table.drop(columns=dropped)


def write_subsets(folder: str | os.PathLike, table: pd.DataFrame, voxel_size_nm: float,
                  box_voxels: int, optics_columns: dict | None = None) -> list[Path]:
    """``all.star`` and ``cluster_<ccc>.star`` per non-empty cluster (``optics_columns``:
    further optics-block columns, e.g. the microscope); returns their paths."""
    from tomosift.tomograms.relion import write_particles_star

    folder = Path(folder)
    written = [folder / "all.star"]
    write_particles_star(written[0], table, voxel_size_nm, box_voxels,
                         optics_columns=optics_columns)
    for number in np.unique(table["rlnClassNumber"].to_numpy()):
        path = folder / f"cluster_{int(number):03d}.star"
        subset = table[table["rlnClassNumber"] == number].reset_index(drop=True)
        write_particles_star(path, subset, voxel_size_nm, box_voxels,
                             optics_columns=optics_columns)
        written.append(path)
    return written


def write_cluster_tsv(path: str | os.PathLike, indices: np.ndarray, clusters: np.ndarray,
                      distances: np.ndarray, true_classes: Sequence[str] | None) -> None:
    """``index``, ``cluster`` (1-based), ``distance`` (to its centre, feature units) and,
    when known, ``class`` (the true class), by
    :func:`tomosift.discovery.cluster.write_cluster_table`."""
    from tomosift.discovery.cluster import write_cluster_table

    write_cluster_table(path, indices, clusters, distances=distances, true_classes=true_classes)


def summary_table(clusters: np.ndarray, distances: np.ndarray, k: int,
                  true_classes: Sequence[str] | None) -> pd.DataFrame:
    """One row per cluster 1..k: members, fraction, mean distance and, when the truth is
    known, its majority class and that class's share of the cluster."""
    from tomosift.discovery.cluster import cluster_sizes

    clusters = np.asarray(clusters)
    sizes = cluster_sizes(clusters - 1, k)
    sums = np.bincount(clusters - 1, weights=distances, minlength=k)
    frame = pd.DataFrame({"cluster": np.arange(1, k + 1), "members": sizes,
                          "fraction": sizes / max(len(clusters), 1),
                          "mean_distance": np.where(sizes > 0, sums / np.maximum(sizes, 1),
                                                    np.nan)})
    if true_classes is not None:
        truth = pd.Series(list(true_classes))
        majority, share = [], []
        for number, size in zip(frame["cluster"], sizes, strict=True):
            if size == 0:
                majority.append("")
                share.append(np.nan)
                continue
            counts = truth[clusters == number].value_counts(sort=False)
            best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0]
            majority.append(best[0])
            share.append(best[1] / size)
        frame["majority_class"] = majority
        frame["majority_fraction"] = share
    return frame


def write_summary_tsv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def plot_cluster_sizes(path: str | os.PathLike, sizes: np.ndarray, title: str = "") -> None:
    """Bar chart of cluster sizes in decreasing order (log y when they span > 30x)."""
    from tomosift.plots import plt, save_figure

    sizes = np.sort(np.asarray(sizes))[::-1]
    figure, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.12 * len(sizes) + 3)), 3.2))
    ax.bar(np.arange(1, len(sizes) + 1), sizes, width=0.85, color="steelblue")
    positive = sizes[sizes > 0]
    if positive.size and positive.max() > 30 * positive.min():
        ax.set_yscale("log")
    ax.set_xlabel("cluster (by size)")
    ax.set_ylabel("subtomograms")
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def plot_clusters_embedding(path: str | os.PathLike, xy: np.ndarray, clusters: np.ndarray,
                            title: str = "") -> None:
    """A 2D embedding coloured by cluster (a legend only for up to 20 clusters)."""
    from tomosift.plots import plt, save_figure

    figure, ax = plt.subplots(figsize=(6.4, 5.2))
    numbers = np.unique(clusters)
    cmap = plt.get_cmap("tab20")
    for number in numbers:
        chosen = clusters == number
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=8, color=cmap(int(number - 1) % 20),
                   linewidths=0, alpha=0.7, label=f"cluster {int(number)}")
    if len(numbers) <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
