"""Gathering shard features and clustering them: Lloyd's k-means up to 10⁵ particles,
mini-batch k-means beyond (the features are N x C logits: small even for millions).

Clusters are numbered 1 .. K by decreasing size (ties: the k-means order), so cluster 1 is
the largest everywhere (tables, STAR files, averages); a cluster left empty by mini-batch
k-means gets the last numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tomosift.discovery.features import FeatureSet, read_features
from tomosift.errors import TomosiftError

STREAMING_THRESHOLD = 100_000  # mini-batch k-means beyond this many particles
STREAM_CHUNK = 8192  # rows per step of the distance computation


def gather_features(feature_paths: Sequence[str | os.PathLike], n_particles: int) -> FeatureSet:
    """Shard feature files concatenated in index order; they must cover 0 .. N-1 exactly
    once (else the error names the shard files)."""
    if not feature_paths:
        raise TomosiftError("no feature files to gather")
    sets = [read_features(p) for p in feature_paths]
    indices = np.concatenate([s.indices for s in sets])
    names = ", ".join(str(p) for p in feature_paths)
    counts = np.bincount(indices[(indices >= 0) & (indices < n_particles)],
                         minlength=n_particles)
    if (len(indices) != n_particles or indices.min(initial=0) < 0
            or indices.max(initial=0) >= n_particles or np.any(counts != 1)):
        missing = int(np.count_nonzero(counts == 0))
        repeated = int(np.count_nonzero(counts > 1))
        raise TomosiftError(f"the shard feature files {names} do not cover the {n_particles} "
                            f"particles exactly once ({missing} missing, {repeated} repeated)")
    widths = {s.features.shape[1] for s in sets if len(s.indices)}
    models = {s.attrs.get("model_sha256") for s in sets}
    if len(widths) > 1 or len(models) > 1:
        raise TomosiftError(f"the shard feature files {names} come from different models")
    order = np.argsort(indices, kind="stable")
    softmax = [s.max_softmax for s in sets]
    return FeatureSet(
        np.concatenate([s.features for s in sets])[order], indices[order],
        np.concatenate([s.labels for s in sets])[order],
        np.concatenate([s.splits for s in sets])[order], sets[0].class_names,
        dict(sets[0].attrs),
        np.concatenate(softmax)[order] if all(m is not None for m in softmax) else None)


def cluster(features: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means of (N, F) features (:func:`tomosift.discovery.cluster.kmeans`: Lloyd's up to
    ``STREAMING_THRESHOLD`` vectors, mini-batch beyond): (clusters (N,) int64 numbered 1..k by
    decreasing size, distance (N,) float64 of each vector to its centre)."""
    from tomosift.discovery.cluster import cluster_sizes, kmeans

    n = len(features)
    labels, centres = kmeans(features, k, seed, minibatch_threshold=STREAMING_THRESHOLD)
    ranking = np.argsort(-cluster_sizes(labels, k), kind="stable")  # old id of new 1, 2, ...
    number = np.empty(k, dtype=np.int64)
    number[ranking] = np.arange(1, k + 1)
    distances = np.empty(n)
    for a in range(0, n, STREAM_CHUNK):
        x = np.asarray(features[a : a + STREAM_CHUNK], dtype=np.float64)
        distances[a : a + len(x)] = np.linalg.norm(x - centres[labels[a : a + len(x)]], axis=1)
    return number[labels], distances


def check_k(k: int, n_particles: int, data_path: str | os.PathLike) -> None:
    if k < 1 or k > n_particles:
        raise TomosiftError(f"{data_path}: k = {k} clusters for {n_particles} subtomograms "
                            "(need 1 <= k <= N)")
