"""k-means over-partitioning of feature vectors and how it agrees with the truth.

The paper (Xu et al. 2017, Section 2.3) clusters subtomograms' features into more clusters
than there are structures, then looks for the cluster where a structure is most enriched;
cluster sizes (Fig. S1) show how evenly a feature type spreads the particles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics.cluster import contingency_matrix

from tomosift.errors import TomosiftError
from tomosift.io import atomic_path

KMEANS_N_INIT = 10
MINIBATCH_N_INIT = 3
MINIBATCH_BATCH_SIZE = 4096


def kmeans(
    features: np.ndarray, k: int, seed: int, minibatch_threshold: int = 100_000,
    standardize: bool = False, n_init: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster feature vectors with k-means.

    Up to ``minibatch_threshold`` vectors, scikit-learn's ``KMeans`` (k-means++ seeding, Lloyd
    iterations, best of ``KMEANS_N_INIT`` = 10 starts); beyond it ``MiniBatchKMeans`` (best of
    ``MINIBATCH_N_INIT`` = 3 starts, batches of ``MINIBATCH_BATCH_SIZE`` = 4096). Both are seeded
    with ``seed``, so the same input gives the same labels.

    Args:
        features: (N, F) feature vectors.
        k: number of clusters, 1 <= k <= N.
        seed: random seed.
        standardize: z-score each feature over the N vectors first. Off by default: the
            features tomosift clusters (voxels, logits, RIF) share their units within a vector,
            and z-scoring would inflate features that are nearly constant (box corners, dead
            units) to the weight of informative ones. Zero-variance features stay 0.
        n_init: number of starts, overriding the defaults above (the cost of ``KMeans`` grows
            as n_init · N · k · F per iteration, which for k = 100 over tens of thousands of
            4096-feature vectors is many CPU minutes).

    Returns:
        (labels, centres): labels (N,) int64 in 0 .. k-1; centres (k, F) float64 in the units
        of ``features`` (mapped back when standardised).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise TomosiftError(f"k-means needs features of shape (N, F), got {x.shape}")
    n = x.shape[0]
    if k < 1 or k > n:
        raise TomosiftError(f"k-means: k = {k} clusters for N = {n} feature vectors "
                            "(need 1 <= k <= N)")
    if n_init is not None and n_init < 1:
        raise TomosiftError(f"k-means: n_init must be >= 1, got {n_init}")
    if not np.all(np.isfinite(x)):
        raise TomosiftError("k-means: the features contain NaN or infinite values")
    mean = np.zeros(x.shape[1])
    scale = np.ones(x.shape[1])
    if standardize:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        x = (x - mean) / scale
    if n > minibatch_threshold:
        model = MiniBatchKMeans(n_clusters=k, n_init=n_init or MINIBATCH_N_INIT, random_state=seed,
                                batch_size=MINIBATCH_BATCH_SIZE)
    else:
        model = KMeans(n_clusters=k, n_init=n_init or KMEANS_N_INIT, random_state=seed)
    labels = model.fit_predict(x).astype(np.int64)
    centres = model.cluster_centers_ * scale + mean
    return labels, centres


def cluster_sizes(labels: np.ndarray, k: int) -> np.ndarray:
    """Members per cluster: (k,) int64 counts of labels (N,) in 0 .. k-1 (empty clusters 0)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise TomosiftError(f"cluster labels must lie in 0..{k - 1}, got "
                            f"{labels.min()}..{labels.max()}")
    return np.bincount(labels.astype(np.int64), minlength=k)


def agreement(true_labels: np.ndarray, cluster_labels: np.ndarray) -> dict[str, float]:
    """How well clusters match the true classes.

    Returns:
        ``purity`` (Σ over clusters of the count of its majority class, / N; 1 for a
        partition that never mixes classes, however many clusters), ``adjusted_rand``
        (sklearn's adjusted Rand index) and ``nmi`` (normalised mutual information,
        arithmetic normalisation).
    """
    true_labels, cluster_labels = _pair(true_labels, cluster_labels)
    table = contingency_matrix(true_labels, cluster_labels)  # (classes, clusters)
    return {
        "purity": float(table.max(axis=0).sum() / true_labels.size),
        "adjusted_rand": float(metrics.adjusted_rand_score(true_labels, cluster_labels)),
        "nmi": float(metrics.normalized_mutual_info_score(true_labels, cluster_labels)),
    }


def _pair(true_labels: np.ndarray, cluster_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(true_labels).ravel()
    b = np.asarray(cluster_labels).ravel()
    if a.size != b.size:
        raise TomosiftError(f"{a.size} true labels but {b.size} cluster labels")
    if a.size == 0:
        raise TomosiftError("no labels to compare")
    return a, b


def enrichment(
    true_labels: np.ndarray, cluster_labels: np.ndarray, target_class: int
) -> pd.DataFrame:
    """Where one class went: one row per non-empty cluster, sorted by cluster id.

    Columns: ``cluster``, ``size`` (members), ``count`` (members of ``target_class``),
    ``fraction_in_cluster`` (count / size: how enriched the cluster is) and
    ``fraction_in_class`` (count / members of the class overall: how much of the class it
    holds).
    """
    true_labels, cluster_labels = _pair(true_labels, cluster_labels)
    is_target = true_labels == target_class
    total = int(is_target.sum())
    if total == 0:
        raise TomosiftError(f"class {target_class} has no members among the {true_labels.size} "
                            "labels")
    clusters, sizes = np.unique(cluster_labels, return_counts=True)
    counts = np.array([int(is_target[cluster_labels == c].sum()) for c in clusters])
    return pd.DataFrame({
        "cluster": clusters.astype(np.int64),
        "size": sizes.astype(np.int64),
        "count": counts.astype(np.int64),
        "fraction_in_cluster": counts / sizes,
        "fraction_in_class": counts / total,
    })


def most_enriched_cluster(
    true_labels: np.ndarray, cluster_labels: np.ndarray, target_class: int,
    min_fraction_of_class: float = 0.05, min_count: int = 1,
) -> int:
    """The cluster where ``target_class`` is most enriched (the one the paper averages).

    Rule: the highest ``fraction_in_cluster`` (count / size) among clusters holding at least
    ``max(min_count, ceil(min_fraction_of_class · class size))`` members of the class
    (capped at the most any cluster holds). Enrichment is what makes a subset worth
    averaging; the floor keeps a cluster of a handful of particles, pure by chance, from
    winning, since its average would be too noisy to show the structure. Ties go to the
    larger count, then to the smaller cluster id.

    Returns:
        the cluster id.
    """
    if not 0 <= min_fraction_of_class <= 1:
        raise TomosiftError(f"min_fraction_of_class must lie in [0, 1], got "
                            f"{min_fraction_of_class}")
    table = enrichment(true_labels, cluster_labels, target_class)
    total = int(table["count"].sum())
    # capped at the most any cluster holds, so that some cluster is always eligible
    floor = min(int(table["count"].max()),
                max(min_count, math.ceil(min_fraction_of_class * total), 1))
    eligible = table[table["count"] >= floor]
    best = eligible.sort_values(["fraction_in_cluster", "count", "cluster"],
                                ascending=[False, False, True], kind="mergesort")
    return int(best["cluster"].iloc[0])


def size_statistics(
    sizes: np.ndarray, small: int = 10, large: int = 1000
) -> dict[str, float | int]:
    """Summary of cluster sizes (paper Fig. S1).

    Returns:
        ``n_clusters``, ``mean``, ``std`` (population, ddof 0), ``cv`` (std / mean), ``min``,
        ``max``, ``n_small`` (clusters with size <= ``small``, 10) and ``n_large`` (size >
        ``large``, 1000).
    """
    s = np.asarray(sizes, dtype=np.float64).ravel()
    if s.size == 0:
        raise TomosiftError("no cluster sizes to summarise")
    mean = float(s.mean())
    std = float(s.std())
    return {
        "n_clusters": int(s.size),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else math.nan,
        "min": int(s.min()),
        "max": int(s.max()),
        "n_small": int(np.count_nonzero(s <= small)),
        "n_large": int(np.count_nonzero(s > large)),
    }


def plot_cluster_size_histograms(
    path: str | os.PathLike, sizes_by_label: Mapping[str, np.ndarray], title: str = ""
) -> None:
    """Histograms of cluster sizes, one panel per feature type (label), log-spaced bins (PNG)."""
    from tomosift.plots import plt, save_figure

    if not sizes_by_label:
        raise TomosiftError("no cluster sizes to plot")
    largest = max(max(int(np.max(s)) for s in sizes_by_label.values()), 2)
    bins = np.unique(np.round(np.logspace(0, np.log10(largest + 1), 30)))
    rows = len(sizes_by_label)
    figure, axes = plt.subplots(rows, 1, figsize=(5.0, 1.6 * rows + 0.6), sharex=True,
                                squeeze=False)
    for ax, (label, sizes) in zip(axes[:, 0], sizes_by_label.items(), strict=True):
        s = np.asarray(sizes)
        stats = size_statistics(s)
        ax.hist(np.maximum(s, 1), bins=bins, color="steelblue", edgecolor="white", lw=0.4)
        ax.set_xscale("log")
        ax.set_ylabel("clusters", fontsize=8)
        ax.set_title(f"{label}: {stats['n_clusters']} clusters, CV {stats['cv']:.2f}, "
                     f"≤10: {stats['n_small']}, >1000: {stats['n_large']}", fontsize=8)
    axes[-1, 0].set_xlabel("cluster size (subtomograms)")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def write_cluster_table(
    path: str | os.PathLike, ids: np.ndarray, labels: np.ndarray,
    true_labels: np.ndarray | None = None, class_names: Sequence[str] | None = None,
    distances: np.ndarray | None = None, true_classes: Sequence[str] | None = None,
) -> None:
    """Write cluster memberships as TSV, atomically.

    Columns: ``index`` (the subtomogram's index in its dataset), ``cluster``, with
    ``distances`` ``distance`` (to the cluster's centre, feature units, 6 significant
    digits), and when the truth is known ``label`` (class index) and, with ``class_names``,
    ``class`` (its name); ``true_classes``: (N,) class names, written as ``class`` without
    ``label``.
    """
    ids = np.asarray(ids).ravel()
    labels = np.asarray(labels).ravel()
    if ids.size != labels.size:
        raise TomosiftError(f"{path}: {ids.size} indices but {labels.size} cluster labels")
    frame = pd.DataFrame({"index": ids.astype(np.int64), "cluster": labels.astype(np.int64)})
    if distances is not None:
        distances = np.asarray(distances, dtype=np.float64).ravel()
        if distances.size != ids.size:
            raise TomosiftError(f"{path}: {ids.size} indices but {distances.size} distances")
        frame["distance"] = distances
    if true_labels is not None:
        true_labels = np.asarray(true_labels).ravel()
        if true_labels.size != ids.size:
            raise TomosiftError(f"{path}: {ids.size} indices but {true_labels.size} true labels")
        frame["label"] = true_labels.astype(np.int64)
        if class_names is not None:
            names = list(class_names)
            if true_labels.size and (true_labels.min() < 0 or true_labels.max() >= len(names)):
                raise TomosiftError(f"{path}: true labels exceed the {len(names)} class names")
            frame["class"] = [names[i] for i in true_labels]
    elif true_classes is not None:
        if len(true_classes) != ids.size:
            raise TomosiftError(f"{path}: {ids.size} indices but {len(true_classes)} classes")
        frame["class"] = list(true_classes)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def read_cluster_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_cluster_table` (``index`` and ``cluster`` int64)."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: cluster table not found")
    try:
        frame = pd.read_csv(path, sep="\t")
    except (ValueError, OSError) as exc:
        raise TomosiftError(f"{path}: not a readable cluster table ({exc})") from exc
    missing = [c for c in ("index", "cluster") if c not in frame.columns]
    if missing:
        raise TomosiftError(f"{path}: cluster table lacks column(s) {', '.join(missing)}")
    try:
        frame["index"] = frame["index"].astype(np.int64)
        frame["cluster"] = frame["cluster"].astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise TomosiftError(f"{path}: index and cluster must be integers") from exc
    return frame


def parse_subset_spec(spec: str) -> tuple[Path, int]:
    """Split ``TABLE.tsv:CLUSTER`` into (table path, cluster id); the last colon separates."""
    path_text, sep, cluster_text = spec.rpartition(":")
    if not sep or not path_text:
        raise TomosiftError(f"subset {spec!r}: expected TABLE.tsv:CLUSTER")
    try:
        cluster = int(cluster_text)
    except ValueError:
        raise TomosiftError(
            f"subset {spec!r}: cluster {cluster_text!r} is not an integer"
        ) from None
    return Path(path_text), cluster


def subset_indices(spec: str) -> np.ndarray:
    """Dataset indices (int64, in table order) of the cluster named by ``TABLE.tsv:CLUSTER``."""
    path, cluster = parse_subset_spec(spec)
    frame = read_cluster_table(path)
    chosen = frame["index"].to_numpy()[frame["cluster"].to_numpy() == cluster]
    if chosen.size == 0:
        present = np.unique(frame["cluster"].to_numpy())
        span = f"{present.min()}..{present.max()}" if present.size else "none"
        raise TomosiftError(f"{path}: no cluster {cluster} (clusters present: {span})")
    return chosen.astype(np.int64)
