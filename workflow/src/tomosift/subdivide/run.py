"""Subdivision of a dataset of any size: CNN features, k-means, RELION-ready subsets.

The two halves a workflow scatters and gathers are :func:`~tomosift.subdivide.shards.
shard_features` (one job per shard) and :func:`gather_and_cluster`; :func:`cluster_averages`
adds a reference-free average per large cluster; :func:`subdivide` runs all of it in one
process. Every step's outputs are written atomically and reused when present and valid, so
a killed run restarted finishes without recomputing what was finished.

Out-dir layout::

    particles.h5            (only for a STAR / folder input: the imported dataset)
    features.h5             logits + max softmax of every particle (a feature file)
    clusters.tsv            index, cluster (1-based, 1 = largest), distance[, class]
    summary.tsv             per cluster: members, fraction, mean distance[, majority class]
    summary.txt             the lines the command prints (sizes, CV, agreement, notes)
    subsets/all.star        every particle, rlnClassNumber = its cluster
    subsets/cluster_001.star ...   one RELION 5 particles file per non-empty cluster
    cluster_sizes.png       cluster sizes, sorted
    embedding.png           t-SNE of a seeded subsample (coloured by true class if known)
    averages/cluster_001.mrc ...   (with averages > 0) and averages.png
    subdivide.json          what the clustering outputs were made from (written last)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomosift.errors import TomosiftError
from tomosift.io import write_text
from tomosift.subdivide.averages import cluster_averages
from tomosift.subdivide.clusters import check_k, cluster, gather_features
from tomosift.subdivide.outputs import (
    particle_metadata,
    particles_table,
    plot_cluster_sizes,
    plot_clusters_embedding,
    subsets_note,
    summary_table,
    write_cluster_tsv,
    write_subsets,
    write_summary_tsv,
)
from tomosift.subdivide.shards import data_geometry, file_sha256, shard_features

MANIFEST = "subdivide.json"


@dataclass
class SubdivideResult:
    """Clusters of one dataset: per particle (dataset-index order) its cluster (1-based) and
    distance to the centre; sizes (k,) of clusters 1..k; the summary lines; the files."""

    out_dir: Path
    k: int
    indices: np.ndarray
    clusters: np.ndarray
    distances: np.ndarray
    sizes: np.ndarray
    summary_lines: list[str]
    files: dict[str, Path | list[Path]] = field(default_factory=dict)

    @property
    def n_particles(self) -> int:
        return len(self.indices)


def _true_classes(labels: np.ndarray, names: list[str]) -> list[str] | None:
    if not names or len(labels) == 0 or labels.min() < 0 or labels.max() >= len(names):
        return None
    return [names[i] for i in labels]


def _summary_lines(data_path, clusters: np.ndarray, k: int, labels: np.ndarray | None,
                   note: str) -> list[str]:
    from tomosift.discovery.cluster import agreement, cluster_sizes, size_statistics

    sizes = cluster_sizes(clusters - 1, k)
    stats = size_statistics(sizes)
    lines = [f"{data_path}: {len(clusters)} subtomograms in {k} clusters "
             f"({int(np.count_nonzero(sizes))} non-empty), sizes {stats['min']}-{stats['max']}, "
             f"mean {stats['mean']:.1f}, coefficient of variation {stats['cv']:.2f}"]
    if labels is not None:
        scores = agreement(labels, clusters)
        lines.append(f"against the truth ({len(np.unique(labels))} classes): purity "
                     f"{scores['purity']:.3f}, adjusted Rand {scores['adjusted_rand']:.3f}, "
                     f"NMI {scores['nmi']:.3f}")
    lines.append(note)
    return lines


def _load_result(out: Path, k: int) -> SubdivideResult:
    import pandas as pd

    table = pd.read_csv(out / "clusters.tsv", sep="\t")
    clusters = table["cluster"].to_numpy(dtype=np.int64)
    lines = (out / "summary.txt").read_text().splitlines()
    return SubdivideResult(out, k, table["index"].to_numpy(dtype=np.int64), clusters,
                           table["distance"].to_numpy(dtype=np.float64),
                           np.bincount(clusters, minlength=k + 1)[1:], lines,
                           _files(out, clusters))


def _files(out: Path, clusters: np.ndarray) -> dict:
    return {"clusters": out / "clusters.tsv", "summary": out / "summary.tsv",
            "summary_text": out / "summary.txt", "all_star": out / "subsets" / "all.star",
            "subsets": [out / "subsets" / f"cluster_{c:03d}.star" for c in np.unique(clusters)],
            "cluster_sizes": out / "cluster_sizes.png", "embedding": out / "embedding.png"}


def gather_and_cluster(feature_paths: Sequence[str | os.PathLike], data_path: str | os.PathLike,
                       out_dir: str | os.PathLike, k: int, seed: int = 1,
                       embedding_points: int = 2000, progress: bool = True) -> SubdivideResult:
    """Gather shard feature files (they must cover the dataset exactly once), cluster them
    into ``k`` clusters and write the tables, STAR subsets and plots of the module docstring.
    Outputs made from the same feature files, k, seed and embedding size are reused."""
    import sys

    from tomosift.discovery.embed import plot_embedding, tsne_2d

    out = Path(out_dir)
    geometry = data_geometry(data_path)
    check_k(k, geometry["n"], data_path)
    feature_paths = [Path(p) for p in feature_paths]
    for path in feature_paths:
        if not path.is_file():
            raise TomosiftError(f"{path}: feature file not found")
    manifest = {"features": [file_sha256(p) for p in feature_paths], "data": str(data_path),
                "k": int(k), "seed": int(seed), "embedding_points": int(embedding_points)}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        result = _load_result(out, k)
        if all(Path(p).is_file() for p in (*result.files["subsets"], result.files["clusters"])):
            return result
    feature_set = gather_features(feature_paths, geometry["n"])
    if progress:
        print(f"clustering {len(feature_set.indices)} feature vectors into {k} clusters",
              file=sys.stderr, flush=True)
    clusters, distances = cluster(feature_set.features, k, seed)
    labels = feature_set.labels
    truth = _true_classes(labels, feature_set.class_names)
    meta = particle_metadata(data_path)
    write_cluster_tsv(out / "clusters.tsv", feature_set.indices, clusters, distances, truth)
    write_summary_tsv(out / "summary.tsv", summary_table(clusters, distances, k, truth))
    lines = _summary_lines(data_path, clusters, k, labels if truth else None,
                           subsets_note(meta))
    write_text(out / "summary.txt", "\n".join(lines) + "\n")
    table = particles_table(feature_set.indices, clusters, distances, meta, truth)
    write_subsets(out / "subsets", table, geometry["voxel_size_nm"], geometry["box"],
                  geometry["optics_columns"])
    sizes = np.bincount(clusters, minlength=k + 1)[1:]
    plot_cluster_sizes(out / "cluster_sizes.png", sizes, f"{k} clusters of "
                       f"{len(clusters)} subtomograms")
    if embedding_points >= 4 and len(clusters) >= 4:
        xy, rows = tsne_2d(feature_set.features, seed, max_points=embedding_points)
        title = f"t-SNE of {len(rows)} of {len(clusters)} feature vectors"
        if truth:
            plot_embedding(out / "embedding.png", xy, labels[rows], feature_set.class_names,
                           title=title + " (true class)")
        else:
            plot_clusters_embedding(out / "embedding.png", xy, clusters[rows],
                                    title + " (cluster)")
    write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return SubdivideResult(out, k, feature_set.indices, clusters, distances, sizes, lines,
                           _files(out, clusters))


def _newest_mtime(source: Path) -> float:
    if source.is_dir():
        return max([source.stat().st_mtime] + [p.stat().st_mtime for p in source.rglob("*")
                                                if p.suffix in (".star", ".mrc", ".map", ".rec")])
    return source.stat().st_mtime


def dataset_of(data_path: str | os.PathLike, out_dir: str | os.PathLike,
               progress: bool = True) -> Path:
    """The dataset file of an input: an ``.h5`` as it is; a particles ``.star`` or a folder
    imported into ``out_dir/particles.h5`` (reused when newer than the source)."""
    source = Path(data_path)
    if not source.exists():
        raise TomosiftError(f"{source}: not found")
    if source.is_file() and source.suffix != ".star":
        return source
    target = Path(out_dir) / "particles.h5"
    if target.is_file() and target.stat().st_mtime >= _newest_mtime(source):
        return target
    from tomosift.tomograms.imports import import_particles

    import_particles(source, target, progress=progress)
    return target


def subdivide(model_path: str | os.PathLike, data_path: str | os.PathLike,
              out_dir: str | os.PathLike, k: int, averages: int = 0, batch_size: int = 64,
              workers: int = 0, device: str = "auto", threads: int | None = None,
              seed: int = 1, progress: bool = True,
              embedding_points: int = 2000) -> SubdivideResult:
    """Features, clusters and subsets of one dataset (``.h5``, particles ``.star`` or a
    folder) in one process; ``averages`` > 0 also averages that many of the largest
    clusters. See the module docstring for the out-dir layout."""
    out = Path(out_dir)
    data = dataset_of(data_path, out, progress)
    check_k(k, data_geometry(data)["n"], data)
    features = shard_features(model_path, data, out / "features.h5", 0, 1, batch_size, workers,
                              device, threads, progress)
    result = gather_and_cluster([features], data, out, k, seed, embedding_points, progress)
    result.files["features"] = features
    if averages > 0:
        result.files["averages"] = cluster_averages(data, out / "clusters.tsv", out, averages,
                                                    seed=seed, threads=threads,
                                                    progress=progress)
    return result


def subdivide_tomogram(model_path: str | os.PathLike, tomogram_path: str | os.PathLike,
                       out_dir: str | os.PathLike, k: int, picks_path=None, pick_settings=None,
                       smooth_sigma_nm: float | None = None, tilt_max_deg: float = 60.0,
                       **options) -> SubdivideResult:
    """A tomogram to subsets in one process: DoG picks (or ``picks_path``) -> subtomograms cut
    at the model's box and binned to its voxel size -> :func:`subdivide`.

    Writes ``out_dir/picks.star`` and ``out_dir/particles.h5`` besides subdivide's outputs,
    with ``out_dir/tomogram.json`` recording what they were made from: a rerun with the same
    tomogram and settings reuses them. Particles keep the picker's polarity (``dark``: as
    reconstructed from recorded images); the features flip them when the model was trained
    on the other polarity. ``options`` go to :func:`subdivide` (``averages``, ``batch_size``,
    ``workers``, ``device``, ``threads``, ``seed``, ``progress``, ``embedding_points``).
    """
    from dataclasses import asdict

    from tomosift.classify.modelfile import load_model
    from tomosift.io import mrc_voxel_size_nm
    from tomosift.subdivide.shards import VOXEL_SIZE_TOLERANCE, check_model_matches, file_sha256
    from tomosift.tomograms.extract import extract_subtomograms, source_box
    from tomosift.tomograms.pick import PickSettings, pick_tomogram

    out = Path(out_dir)
    tomogram = Path(tomogram_path)
    pick_settings = pick_settings or PickSettings(tilt_max_deg=tilt_max_deg)
    model = load_model(model_path)
    box = int(model["box_voxels"])
    target = (model.get("trained_on") or {}).get("voxel_size_nm")
    if model["method"] == "rif-svm":
        check_model_matches(model, model_path, tomogram, box, None)  # refuses with its message
    if target is None:
        raise TomosiftError(f"{model_path}: the model does not record the voxel size it was "
                            "trained on; extract the subtomograms yourself (tomosift extract) "
                            "and pass them with --data")
    tomogram_voxel = mrc_voxel_size_nm(tomogram)
    if float(target) < tomogram_voxel * (1 - VOXEL_SIZE_TOLERANCE):
        raise TomosiftError(f"{model_path} was trained on voxels of {float(target):g} nm, "
                            f"smaller than {tomogram}'s {tomogram_voxel:g} nm (extraction bins, "
                            "it does not upsample)")
    achieved = tomogram_voxel * source_box(box, float(target), tomogram_voxel) / box
    if abs(achieved - float(target)) > VOXEL_SIZE_TOLERANCE * float(target):
        raise TomosiftError(f"{tomogram}: voxels of {tomogram_voxel:g} nm bin to {achieved:g} nm "
                            f"in a {box}-voxel box, not to the {float(target):g} nm that "
                            f"{model_path} was trained on (within 1%)")
    made_from = {"tomogram": str(tomogram.resolve()), "tomogram_sha256": file_sha256(tomogram),
                 "picks": None if picks_path is None else str(Path(picks_path).resolve()),
                 "pick_settings": asdict(pick_settings), "box_voxels": box,
                 "voxel_size_nm": float(target), "smooth_sigma_nm": smooth_sigma_nm,
                 "tilt_max_deg": float(tilt_max_deg)}
    record = out / "tomogram.json"
    data = out / "particles.h5"
    reuse = record.is_file() and data.is_file() and json.loads(record.read_text()) == made_from
    if not reuse:
        if picks_path is None:
            picks_path = out / "picks.star"
            pick_tomogram(tomogram, picks_path, pick_settings, box_voxels=box)
        extract_subtomograms(tomogram, picks_path, data, box_voxels=box,
                             voxel_size_nm=float(target), smooth_sigma_nm=smooth_sigma_nm,
                             tilt_max_deg=tilt_max_deg, polarity=pick_settings.polarity,
                             progress=options.get("progress", True))
        write_text(record, json.dumps(made_from, indent=1, sort_keys=True) + "\n")
    return subdivide(model_path, data, out, k, **options)
