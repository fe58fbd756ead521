"""The leave-one-out experiment (paper Section 3.3, Table S2, Fig. 4): can a structure that
was never in the training data be recovered from the subdivision?

For each left-out class C and feature source (a CNN trained without C's fold, at one of its
layers, or RIF or pose normalisation):

1. features of the whole test split; k-means with k clusters (:mod:`.cluster`);
2. the cluster where C is most enriched (:func:`.cluster.most_enriched_cluster`: the paper's
   oracle choice, made with the true labels);
3. reference-free classification of its members (:mod:`.classify3d`), and the class whose
   members are most enriched in C;
4. that class average aligned onto C's true density (noise- and wedge-free) and the FSC
   between them (:mod:`.fsc`); success when the 0.5-cutoff resolution is at or below the
   cutoff (7 nm).

Folds (:mod:`.folds`): the paper trains one network per left-out class; with ``folds`` the
classes are split into folds and one network is trained without every class of its fold.
Each class is recovered from its own fold's network (:func:`check_never_seen` proves from the
model's header that the network saw none of the fold's classes).

A strict criterion (tomosift's addition): a 50/50 mixed class average can pass 7 nm. The
reference is the same number of true members of C (the chosen class's count, a seeded draw
from C's test particles) averaged and aligned onto the truth by the same procedure
(:func:`classify_and_score` serves both; :func:`reference_average` caches it by class and
count, and uses one class, so that it holds every drawn particle); ``success_strict`` = the
paper's success with a resolution within ``strict_factor`` (1.2) times the reference's, where
the reference itself reaches FSC 0.5: when the same number of true members does not, there
is nothing to compare with, and the strict criterion is not met (:func:`is_strict_success`;
at dose 80 this is the case for 40-60 kDa complexes, whose box holds more background than
particle at the lowest shells; docs/benchmarks.md, issue 19).

Without the oracle (tomosift's addition): a user cannot pick the cluster by the true labels.
:func:`novelty_scores` ranks clusters by how far their centroid lies from every training
class's centroid in the same feature space (in units of each class's spread); the user
averages the few most novel-looking clusters (``novelty_top``, 3) and looks at them. Steps 3
and 4 run on each of them that holds any of C, success if one recovers C, and the summary
says where the oracle's cluster ranked. With folds, every class of a fold shares the fold's
novelty ranking, so at most ``novelty_top`` of them can be recovered this way per fold:
:func:`classify_novel_cluster` classifies each of the top clusters once, and each class of
the fold is scored on those classifications.

The class of a classification taken for C (:func:`choose_class`) is chosen by the rule that
chooses the cluster: the most enriched in C among those holding enough of C
(``min_class_members``), so that a one-particle class, pure by chance, does not win.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.discovery.cluster import (
    enrichment,
    kmeans,
    most_enriched_cluster,
    read_cluster_table,
    write_cluster_table,
)
from tomosift.discovery.features import FeatureSet
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path, write_mrc

SUMMARY_COLUMNS = ("class", "fold", "features", "model", "cluster_size", "fraction_in_cluster",
                   "fraction_in_class", "resolution_nm", "success", "resolution_0143_nm",
                   "reference_nm", "success_strict", "average", "truth")
CRITERIA = ("paper", "strict")
PAPER_SUCCESSES = {"inception3d": 16, "dsrf3d": 18}  # of 22, paper Table S2


@dataclass(frozen=True)
class RecoverySettings:
    """Settings of one recovery (defaults: the paper's protocol).

    ``max_members``: classify at most this many members of a cluster (a seeded random subset;
    None = all, as the paper did) to bound the time on large clusters. ``novelty_top``: without
    the oracle, the most novel-looking clusters averaged (:func:`novelty_scores`), ranked by
    ``novelty_ranking``: ``distance`` (from the training classes alone) or ``diverse`` (also
    from the clusters ranked before). ``min_class_members``: the chosen class of a
    classification must hold at least this many members of C (capped at C's count;
    :func:`choose_class`), so that a class of one or two particles, pure by chance, is not
    taken for C's structure.
    """

    k: int = 100
    classes: int = 3
    iterations: int = 5
    success_nm: float = 7.0
    seed: int = 1
    max_members: int | None = None
    novelty_top: int = 3
    novelty_ranking: str = "diverse"
    strict_factor: float = 1.2
    min_class_members: int = 10
    workers: int = 1


def _diverse_ranking(centres: np.ndarray, novelty: np.ndarray,
                     spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy ranking of :func:`novelty_scores` (``diverse``): (C, D) cluster centroids, (C,)
    novelty against the training classes. Returns (C,) each cluster's novelty when it was
    ranked and (C,) its rank (1 = first; ties to the lower row)."""
    remaining = novelty.astype(np.float64).copy()
    at_rank = np.zeros(len(remaining))
    rank = np.zeros(len(remaining), dtype=np.int64)
    for step in range(1, len(remaining) + 1):
        best = int(np.argmax(np.where(rank == 0, remaining, -np.inf)))
        at_rank[best], rank[best] = remaining[best], step
        remaining = np.minimum(remaining,
                               np.linalg.norm(centres - centres[best], axis=1) / spread)
    return at_rank, rank


NOVELTY_RANKINGS = ("distance", "diverse")


def _ranked_novelty(feature_set: FeatureSet, clusters: pd.DataFrame,
                    training: Sequence[str], settings: RecoverySettings) -> pd.DataFrame:
    if settings.novelty_ranking not in NOVELTY_RANKINGS:
        raise TomosiftError(f"novelty_ranking must be one of {', '.join(NOVELTY_RANKINGS)}, "
                            f"not '{settings.novelty_ranking}'")
    return novelty_scores(feature_set, clusters, training,
                          diverse=settings.novelty_ranking == "diverse")


def cluster_test_split(feature_set: FeatureSet, k: int, seed: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """k-means of the test split's features: (rows of the feature set, cluster (N_test,))."""
    rows = feature_set.rows("test")
    if len(rows) == 0:
        raise TomosiftError(f"{feature_set.attrs.get('data', 'features')}: no test particles")
    labels, _ = kmeans(feature_set.features[rows], min(k, len(rows)), seed)
    return rows, labels


def write_test_clusters(path: str | os.PathLike, feature_set: FeatureSet, k: int,
                        seed: int) -> None:
    """Cluster the test split and write the table (dataset index, cluster, label, class)."""
    rows, clusters = cluster_test_split(feature_set, k, seed)
    write_cluster_table(path, feature_set.indices[rows], clusters, feature_set.labels[rows],
                        feature_set.class_names)


def novelty_scores(feature_set: FeatureSet, clusters: pd.DataFrame,
                   training_classes: Sequence[str], diverse: bool = False) -> pd.DataFrame:
    """How novel each test cluster looks, without labels of the test split: the distance of
    the cluster's centroid from each training class's centroid (train split, classes the model
    was trained on) in units of that class's spread (root mean squared distance of its
    members to its centroid), minimised over the training classes.

    A cluster of a class the model never saw lies outside every training class's cloud; a
    cluster of a training class, even one at the edge of its cloud, lies within about one
    spread of its own centroid. (Tried on the RIF features of the paper-setting data, 22
    left-out classes: scaling by each class's own spread ranked the oracle's cluster in the
    top 3 for 9 classes, one median spread for all classes for 2, z-scored features for 4.)

    ``diverse``: rank greedily so that one new structure does not fill the top ranks. k-means
    over-partitions a large unseen class into many clusters, all far from every training
    class (fold 4's embedding: 7 of the 8 most novel clusters were 4v94). Each cluster
    ranked is taken as a new class with the training classes' median spread, and the next
    rank goes to the cluster farthest from the training classes and from every cluster
    ranked before it; ``novelty`` is then that distance at the time of ranking.

    Returns one row per cluster: ``cluster``, ``size``, ``novelty``, ``rank`` (1 = most novel),
    and for CNN features ``mean_max_softmax``.
    """
    names = feature_set.class_names
    train = feature_set.rows("train")
    trained = [names.index(n) for n in training_classes if n in names]
    centroids, spreads = [], []
    for label in trained:
        members = feature_set.features[train[feature_set.labels[train] == label]]
        if len(members):
            centroid = members.mean(axis=0, dtype=np.float64)
            centroids.append(centroid)
            spreads.append(max(np.sqrt(np.mean(np.sum((members - centroid) ** 2, axis=1))),
                               1e-12))
    if not centroids:
        raise TomosiftError("no training-class particles in the train split to compare with")
    centroids, spreads = np.stack(centroids), np.array(spreads)
    row_of = {int(index): row for row, index in enumerate(feature_set.indices)}
    records, centres = [], []
    for cluster, group in clusters.groupby("cluster", sort=True):
        rows = np.array([row_of[int(i)] for i in group["index"]])
        centre = feature_set.features[rows].mean(axis=0, dtype=np.float64)
        centres.append(centre)
        distance = np.linalg.norm(centroids - centre, axis=1) / spreads
        record = {"cluster": int(cluster), "size": len(rows), "novelty": float(distance.min())}
        if feature_set.max_softmax is not None:
            record["mean_max_softmax"] = float(feature_set.max_softmax[rows].mean())
        records.append(record)
    table = pd.DataFrame(records)
    if diverse:
        table["novelty"], table["rank"] = _diverse_ranking(
            np.stack(centres), table["novelty"].to_numpy(), float(np.median(spreads)))
    else:
        table = table.sort_values(["novelty", "cluster"], ascending=[False, True])
        table["rank"] = np.arange(1, len(table) + 1)
    return table.sort_values("cluster").reset_index(drop=True)


@dataclass
class Averaged:
    """What :func:`classify_and_score` found: the chosen class of the classification and its
    average's resolution against the truth."""

    n_classified: int
    chosen_class: int  # 1-based class of the reference-free classification
    class_size: int
    class_fraction: float  # fraction of C among the chosen class's members
    resolution_nm: float
    resolution_0143_nm: float


@dataclass
class Recovery:
    """What one recovery found."""

    cluster: int
    cluster_size: int
    fraction_in_cluster: float
    fraction_in_class: float
    chosen_class: int  # 1-based class of the reference-free classification
    class_size: int
    class_fraction: float  # fraction of C among the chosen class's members
    resolution_nm: float
    resolution_0143_nm: float
    success: bool
    reference_nm: float = float("nan")
    reference_count: int = 0
    success_strict: bool = False


def choose_class(labels: np.ndarray, classes: np.ndarray, target: int,
                 min_members: int) -> tuple[int, float]:
    """The class of a classification whose members are most enriched in ``target``, by the
    rule that picks the cluster (:func:`.cluster.most_enriched_cluster`): the highest fraction
    of ``target`` among classes holding at least ``max(min_members, 5% of target's
    members)`` of them (capped at the most any class holds); ties to the larger count, then
    the lower class. ``labels``, ``classes``: (N,) true label and 0-based class of each
    classified particle. Returns (class, fraction of ``target`` in it); (0, 0.0) when no
    particle is ``target``."""
    labels, classes = np.asarray(labels), np.asarray(classes)
    if not np.any(labels == target):
        return 0, 0.0
    chosen = most_enriched_cluster(labels, classes, target, min_count=max(1, min_members))
    return chosen, float(np.mean(labels[classes == chosen] == target))


@dataclass
class Classified:
    """A reference-free classification of dataset particles, kept to be scored against any
    class: ``members`` (N,) dataset indices, ``labels`` (N,) true labels, ``classes`` (N,)
    0-based class of each, ``averages`` (K, n, n, n), ``observed`` (K, n, n, n // 2 + 1) 0/1
    Fourier coverage of each average, ``voxel_size_nm``."""

    members: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    averages: np.ndarray
    observed: np.ndarray
    voxel_size_nm: float

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, members=self.members, labels=self.labels,
                                classes=self.classes, averages=self.averages,
                                observed=self.observed.astype(np.uint8),
                                voxel_size_nm=np.float64(self.voxel_size_nm))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classified:
        try:
            with np.load(path) as saved:
                return cls(saved["members"], saved["labels"], saved["classes"],
                           saved["averages"], saved["observed"].astype(np.float32),
                           float(saved["voxel_size_nm"]))
        except (OSError, KeyError, ValueError) as error:
            raise TomosiftError(f"{path}: not a saved classification ({error})") from error


def classify_members(data_path: str | os.PathLike, members: np.ndarray,
                     out_dir: str | os.PathLike, settings: RecoverySettings,
                     progress: bool = True) -> Classified:
    """Step 3 of the protocol on given dataset particles (``members``: dataset indices):
    reference-free classification into ``settings.classes`` classes (at most half the
    particle count). Writes the classification into ``out_dir/classification`` and returns
    it; it does not depend on which class is looked for, so one classification of a cluster
    serves every left-out class (:func:`score_against_truth`)."""
    from tomosift.discovery.classify3d import (
        ClassifySettings,
        classify,
        write_classification,
    )
    from tomosift.discovery.particles import from_dataset

    members = np.sort(np.asarray(members, dtype=np.int64))
    particles = from_dataset(data_path, members)
    tilt_min, tilt_max = particles.tilt_range_deg
    classify_settings = ClassifySettings(max(1, min(settings.classes, len(members) // 2)),
                                         settings.iterations, tilt_min, tilt_max, settings.seed,
                                         workers=settings.workers)
    result = classify(particles.volumes, classify_settings, progress,
                      particles.observations())
    names = particles.class_names
    write_classification(Path(out_dir) / "classification", result, particles.ids,
                         particles.voxel_size_nm, [names[i] for i in particles.labels])
    observed = np.stack([result.observed(c, classify_settings.mask_threshold)
                         for c in range(len(result.averages))])
    return Classified(members, np.asarray(particles.labels, dtype=np.int64),
                      np.asarray(result.classes, dtype=np.int64), result.averages, observed,
                      float(particles.voxel_size_nm))


def score_against_truth(classified: Classified, target: int, truth: np.ndarray,
                        out_dir: str | os.PathLike, min_class_members: int) -> Averaged:
    """Step 4: the class most enriched in ``target`` (:func:`choose_class`), its average
    aligned onto the truth and the FSC. Writes ``average_on_truth.mrc`` and the FSC
    (``fsc.tsv``, ``fsc.png``) into ``out_dir``."""
    from tomosift.discovery.align import align
    from tomosift.discovery.fsc import compute_fsc, plot_fsc, write_fsc_table
    from tomosift.discovery.rotations import transform_volume

    out = Path(out_dir)
    best, fraction = choose_class(classified.labels, classified.classes, target,
                                  min_class_members)
    chosen = classified.averages[best]
    alignment = align(truth, chosen, None, classified.observed[best])
    on_truth = transform_volume(chosen, alignment.rotation, alignment.shift_voxels)
    voxel_size_nm = classified.voxel_size_nm
    write_mrc(out / "average_on_truth.mrc", on_truth, voxel_size_nm)
    fsc = compute_fsc(truth, on_truth, voxel_size_nm)
    write_fsc_table(out / "fsc.tsv", fsc.shells, fsc.fsc, fsc.box_voxels, fsc.voxel_size_nm)
    plot_fsc(out / "fsc.png", {"average vs truth": (fsc.shells, fsc.fsc)}, fsc.box_voxels,
             fsc.voxel_size_nm, fsc.summary_line())
    return Averaged(n_classified=len(classified.members), chosen_class=best + 1,
                    class_size=int(np.sum(classified.classes == best)),
                    class_fraction=fraction, resolution_nm=float(fsc.resolution_05_nm),
                    resolution_0143_nm=float(fsc.resolution_0143_nm))


def classify_and_score(data_path: str | os.PathLike, members: np.ndarray, target: int,
                       truth: np.ndarray, out_dir: str | os.PathLike,
                       settings: RecoverySettings, progress: bool = True) -> Averaged:
    """Steps 3-4 of the protocol on given dataset particles: :func:`classify_members`, then
    :func:`score_against_truth`, both into ``out_dir``. Both the recovered average and the
    strict criterion's reference come from here, so that they are made by the same
    procedure."""
    classified = classify_members(data_path, members, out_dir, settings, progress)
    return score_against_truth(classified, target, truth, out_dir, settings.min_class_members)


def cluster_members(clusters: pd.DataFrame, cluster: int,
                    settings: RecoverySettings) -> np.ndarray:
    """The dataset indices of a cluster that are classified: all, or ``max_members`` of them
    (a draw seeded by ``settings.seed``, the same for every left-out class)."""
    members = clusters["index"].to_numpy()[clusters["cluster"].to_numpy() == cluster]
    if settings.max_members and len(members) > settings.max_members:
        rng = np.random.default_rng(settings.seed)
        members = np.sort(rng.choice(members, settings.max_members, replace=False))
    return members


def _recovery(clusters: pd.DataFrame, cluster: int, target: int, found: Averaged,
              settings: RecoverySettings) -> Recovery:
    table = enrichment(clusters["label"].to_numpy(), clusters["cluster"].to_numpy(), target)
    row = table[table["cluster"] == cluster].iloc[0]
    return Recovery(
        cluster=int(cluster), cluster_size=int(row["size"]),
        fraction_in_cluster=float(row["fraction_in_cluster"]),
        fraction_in_class=float(row["fraction_in_class"]), chosen_class=found.chosen_class,
        class_size=found.class_size, class_fraction=found.class_fraction,
        resolution_nm=found.resolution_nm, resolution_0143_nm=found.resolution_0143_nm,
        success=bool(found.resolution_nm <= settings.success_nm))


def recover_from_cluster(data_path: str | os.PathLike, clusters: pd.DataFrame, cluster: int,
                         target: int, truth: np.ndarray, out_dir: str | os.PathLike,
                         settings: RecoverySettings, progress: bool = True) -> Recovery:
    """Steps 3-4 of the protocol on one cluster (:func:`cluster_members`), through
    :func:`classify_and_score`; the strict criterion is filled in by
    :func:`judge_strictly`."""
    found = classify_and_score(data_path, cluster_members(clusters, cluster, settings), target,
                               truth, out_dir, settings, progress)
    return _recovery(clusters, cluster, target, found, settings)


def recover_from_classified(classified: Classified, clusters: pd.DataFrame, cluster: int,
                            target: int, truth: np.ndarray, out_dir: str | os.PathLike,
                            settings: RecoverySettings) -> Recovery:
    """:func:`recover_from_cluster` from a cluster's classification made earlier
    (:func:`classify_novel_cluster`), scored for ``target``."""
    found = score_against_truth(classified, target, truth, out_dir, settings.min_class_members)
    return _recovery(clusters, cluster, target, found, settings)


def training_classes_of(feature_set: FeatureSet, held_out: Sequence[str]) -> list[str]:
    """The classes the features' network was trained on: as its feature file records them,
    else every class of the features but ``held_out``."""
    return list(feature_set.attrs.get("training_classes") or [
        n for n in feature_set.class_names if n not in set(held_out)])


def classify_novel_cluster(data_path: str | os.PathLike, features_path: str | os.PathLike,
                           clusters_path: str | os.PathLike, held_out: Sequence[str],
                           rank: int, out_dir: str | os.PathLike, settings: RecoverySettings,
                           progress: bool = True) -> dict:
    """The search without the oracle, one cluster at a time: the ``rank``-th most novel
    cluster of a fold (:func:`novelty_scores`, training classes = the features' classes
    without ``held_out``), classified once for every class of the fold. Writes
    ``classified.npz`` (:class:`Classified`, absent when there are fewer clusters than
    ``rank``) and ``novel.json`` (``rank``, ``cluster``, ``size``, ``novelty``; ``cluster``
    null then), and returns the latter."""
    from tomosift.discovery.features import read_features

    out = Path(out_dir)
    clusters = read_cluster_table(clusters_path)
    feature_set = read_features(features_path)
    training = training_classes_of(feature_set, held_out)
    novelty = _ranked_novelty(feature_set, clusters, training, settings).sort_values("rank")
    record: dict = {"rank": int(rank), "cluster": None, "size": 0, "novelty": float("nan")}
    if rank <= len(novelty):
        chosen = novelty.iloc[rank - 1]
        cluster = int(chosen["cluster"])
        classified = classify_members(data_path, cluster_members(clusters, cluster, settings),
                                      out, settings, progress)
        classified.save(out / "classified.npz")
        record.update(cluster=cluster, size=int(chosen["size"]),
                      novelty=float(chosen["novelty"]))
    with atomic_path(out / "novel.json") as tmp:
        tmp.write_text(json.dumps({**record, "held_out": list(held_out),
                                   "settings": asdict(settings)}, indent=1) + "\n")
    return record


# Settings that change a reference average (the others only judge it; the reference is always
# one class: every drawn particle goes into its average).
_REFERENCE_KEYS = ("iterations", "seed")


def reference_average(data_path: str | os.PathLike, candidates: np.ndarray, target: int,
                      count: int, truth: np.ndarray, cache_dir: str | os.PathLike,
                      settings: RecoverySettings, progress: bool = True) -> tuple[float, int]:
    """The strict criterion's reference: ``count`` true members of the class (a seeded draw
    from ``candidates``, its test particles; all of them when fewer) averaged by
    :func:`classify_and_score` with one class, so that the reference holds every drawn
    particle and is aligned by the same procedure as a recovered class. Returns (FSC-0.5
    resolution in nm, particles drawn). Cached in ``cache_dir/n<count>/`` (``reference.json``
    beside the average and FSC), so rows of several feature sources with the same count
    reuse it."""
    candidates = np.sort(np.asarray(candidates, dtype=np.int64))
    if len(candidates) == 0:
        raise TomosiftError("no test particles of the class for the strict criterion's reference")
    count = max(1, int(count))
    out = Path(cache_dir) / f"n{count:05d}"
    key = {"target": int(target), "count": count, "candidates": len(candidates),
           **{k: getattr(settings, k) for k in _REFERENCE_KEYS}}
    cached = out / "reference.json"
    if cached.is_file():
        saved = json.loads(cached.read_text())
        if saved.get("key") == key:
            return float(saved["resolution_nm"]), int(saved["drawn"])
    if count < len(candidates):
        rng = np.random.default_rng([settings.seed, count])
        drawn = np.sort(rng.choice(candidates, count, replace=False))
    else:
        drawn = candidates
    found = classify_and_score(data_path, drawn, target, truth, out, replace(settings, classes=1),
                               progress)
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({"key": key, "drawn": len(drawn),
                                   "resolution_nm": found.resolution_nm,
                                   "resolution_0143_nm": found.resolution_0143_nm,
                                   "chosen_class_size": found.class_size}, indent=1) + "\n")
    return found.resolution_nm, len(drawn)


def judge_strictly(recovery: Recovery, data_path: str | os.PathLike, candidates: np.ndarray,
                   target: int, truth: np.ndarray, cache_dir: str | os.PathLike,
                   settings: RecoverySettings, progress: bool = True,
                   needed_only: bool = False) -> Recovery:
    """Fill in the strict criterion of a recovery: its reference (:func:`reference_average`
    with the chosen class's particle count) and ``success_strict``
    (:func:`is_strict_success`). ``needed_only``: a recovery that fails the paper's rule
    fails the strict one too, so its reference is not computed (``reference_nm`` stays NaN);
    the novel clusters use this, since each holds a few of many classes."""
    if needed_only and not recovery.success:
        recovery.success_strict = False
        return recovery
    reference_nm, drawn = reference_average(data_path, candidates, target,
                                            recovery.class_size, truth, cache_dir, settings,
                                            progress)
    recovery.reference_nm, recovery.reference_count = reference_nm, drawn
    recovery.success_strict = is_strict_success(recovery.success, recovery.resolution_nm,
                                                reference_nm, settings.strict_factor)
    return recovery


def is_strict_success(success: bool, resolution_nm: float, reference_nm: float,
                      factor: float) -> bool:
    """The strict criterion: the paper's success (FSC 0.5 within ``success_nm``), and a
    resolution at most ``factor`` times ``reference_nm``, which must be finite (an infinite
    reference, one whose FSC never reaches 0.5, would pass any average, even one that never
    reaches 0.5 itself)."""
    return bool(success and np.isfinite(reference_nm)
                and resolution_nm <= factor * reference_nm)


def check_never_seen(model_path: str | os.PathLike, data_path: str | os.PathLike,
                     held_out: Sequence[str]) -> None:
    """Prove from a model's header that it never saw any of ``held_out`` (a fold's classes):
    none is among its classes, all are among its excluded classes, and its training particles
    (count and SHA-256 of their indices) are this dataset's train split without the excluded
    classes. Raises :class:`TomosiftError` otherwise."""
    import hashlib

    from tomosift.classify.inputs import read_split
    from tomosift.classify.modelfile import load_model

    model = load_model(model_path)
    seen = sorted(set(held_out) & set(model["class_names"]))
    if seen:
        raise TomosiftError(f"{model_path}: was trained on {', '.join(seen)}, which it must "
                            "never see")
    excluded = list((model.get("settings") or {}).get("exclude_classes", []))
    missing = sorted(set(held_out) - set(excluded))
    if missing:
        raise TomosiftError(f"{model_path}: does not exclude {', '.join(missing)} from training")
    trained_on = model.get("trained_on") or {}
    split = read_split(data_path, "train", exclude_classes=tuple(excluded))
    digest = hashlib.sha256(np.ascontiguousarray(split.indices, dtype=np.int64)
                            .tobytes()).hexdigest()
    if (trained_on.get("n_train") != len(split.indices)
            or trained_on.get("train_indices_sha256") != digest):
        raise TomosiftError(f"{model_path}: its training particles ({trained_on.get('n_train')}) "
                            f"are not {data_path}'s train split without "
                            f"{', '.join(excluded)} ({len(split.indices)})")


def run_class(data_path: str | os.PathLike, features_path: str | os.PathLike,
              clusters_path: str | os.PathLike, target_class: str,
              truth_path: str | os.PathLike, out_dir: str | os.PathLike, features_name: str,
              settings: RecoverySettings, progress: bool = True, *,
              fold: int | None = None, fold_classes: Sequence[str] | None = None,
              model_path: str | os.PathLike | None = None,
              reference_dir: str | os.PathLike | None = None,
              novel_dirs: Sequence[str | os.PathLike] | None = None) -> dict:
    """The whole protocol for one left-out class and feature source; writes ``row.json``
    (one row of the summary) and returns it.

    ``fold``, ``fold_classes``: the class's fold and all its classes (default: the class
    alone), none of which the training classes may hold; ``model_path``: the fold's network
    (CNN features), checked with :func:`check_never_seen`; ``reference_dir``: where the
    strict criterion's references of this class are cached (default ``out_dir/reference``);
    ``novel_dirs``: the fold's most novel clusters, classified once for all its classes by
    :func:`classify_novel_cluster` (default: the top ``novelty_top`` classified here).
    """
    from tomosift.discovery.features import read_features
    from tomosift.io import read_mrc

    out = Path(out_dir)
    held_out = list(fold_classes or [target_class])
    if target_class not in held_out:
        raise TomosiftError(f"{target_class} is not in its fold ({', '.join(held_out)})")
    references = Path(reference_dir) if reference_dir is not None else out / "reference"
    clusters = read_cluster_table(clusters_path)
    if "label" not in clusters.columns:
        raise TomosiftError(f"{clusters_path}: the leave-one-out needs true labels")
    feature_set = read_features(features_path)
    names = feature_set.class_names
    if target_class not in names:
        raise TomosiftError(f"{features_path}: no class {target_class}")
    if model_path is not None:
        check_never_seen(model_path, data_path, held_out)
    training = training_classes_of(feature_set, held_out)
    leaked = sorted(set(held_out) & set(training))
    if leaked:
        raise TomosiftError(f"{features_path}: the features' training classes hold "
                            f"{', '.join(leaked)}, left out in this fold")
    target = names.index(target_class)
    truth, _ = read_mrc(truth_path)
    labels, cluster_of = clusters["label"].to_numpy(), clusters["cluster"].to_numpy()
    candidates = clusters["index"].to_numpy()[labels == target]  # C's test particles

    def recover(cluster: int, folder: Path, needed_only: bool = False) -> Recovery:
        found = recover_from_cluster(data_path, clusters, cluster, target, truth, folder,
                                     settings, progress)
        return judge_strictly(found, data_path, candidates, target, truth, references,
                              settings, progress, needed_only)

    oracle = most_enriched_cluster(labels, cluster_of, target)
    found = recover(oracle, out / "oracle")
    novelty = _ranked_novelty(feature_set, clusters, training, settings)
    oracle_rank = int(novelty.loc[novelty["cluster"] == oracle, "rank"].iloc[0])
    # Without the oracle: the user averages the most novel-looking clusters and looks at
    # each. C is recovered without the oracle if one of them recovers it; a cluster without a
    # single member of C cannot give C's structure and is not scored.
    table = enrichment(labels, cluster_of, target)
    holding = set(table.loc[table["count"] > 0, "cluster"].astype(int))
    novel: list[Recovery] = []
    if novel_dirs is not None:
        top = []
        for folder in map(Path, novel_dirs):
            record = json.loads((folder / "novel.json").read_text())
            if sorted(record.get("held_out", [])) != sorted(held_out):
                raise TomosiftError(f"{folder}: its novel cluster was ranked for the fold "
                                    f"{' '.join(record.get('held_out', []))}, not "
                                    f"{' '.join(held_out)}")
            if record["cluster"] is None:
                continue
            cluster = int(record["cluster"])
            top.append(cluster)
            if cluster in holding:
                found_here = recover_from_classified(
                    Classified.load(folder / "classified.npz"), clusters, cluster, target,
                    truth, out / f"novel_{cluster}", settings)
                novel.append(judge_strictly(found_here, data_path, candidates, target, truth,
                                            references, settings, progress, needed_only=True))
    else:
        top = [int(c) for c in novelty.sort_values("rank")["cluster"]
               .iloc[:settings.novelty_top]]
        for cluster in top:
            if cluster == oracle:
                novel.append(found)
            elif cluster in holding:
                novel.append(recover(cluster, out / f"novel_{cluster}", needed_only=True))
            if any(r.success for r in novel) and any(r.success_strict for r in novel):
                break  # both counts are settled
    best_novel = min(novel, key=lambda r: r.resolution_nm) if novel else None
    average = out / "oracle" / "average_on_truth.mrc"
    row = {
        "class": target_class, "fold": fold if fold is not None else 1,
        "features": features_name,
        "model": feature_set.attrs.get("model_method", features_name),
        "cluster_size": found.cluster_size, "fraction_in_cluster": found.fraction_in_cluster,
        "fraction_in_class": found.fraction_in_class, "resolution_nm": found.resolution_nm,
        "success": found.success, "resolution_0143_nm": found.resolution_0143_nm,
        "reference_nm": found.reference_nm, "success_strict": found.success_strict,
        "average": str(average), "truth": str(truth_path),
        "layer": feature_set.attrs.get("layer", ""),
        "fold_classes": " ".join(held_out),
        "chosen_class_size": found.class_size, "chosen_class_fraction": found.class_fraction,
        "reference_count": found.reference_count,
        "oracle_novelty_rank": oracle_rank, "n_clusters": len(novelty),
        "novel_top_clusters": len(top), "novel_clusters_with_class": len(novel),
        "novel_best_fraction_in_cluster": max((r.fraction_in_cluster for r in novel),
                                              default=0.0),
        "novel_resolution_nm": best_novel.resolution_nm if best_novel else float("nan"),
        "novel_reference_nm": best_novel.reference_nm if best_novel else float("nan"),
        "novel_success": any(r.success for r in novel),
        "novel_success_strict": any(r.success_strict for r in novel),
    }
    with atomic_path(out / "row.json") as tmp:
        tmp.write_text(json.dumps({**row, "settings": asdict(settings)}, indent=1) + "\n")
    return row


def summarise(row_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> pd.DataFrame:
    """Gather ``row.json`` files into the summary TSV (the paper's Table S2)."""
    rows = []
    for path in row_paths:
        record = json.loads(Path(path).read_text())
        record.pop("settings", None)
        rows.append(record)
    table = pd.DataFrame(rows)
    ordered = [*SUMMARY_COLUMNS, *[c for c in table.columns if c not in SUMMARY_COLUMNS]]
    table = table[ordered]
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    return table


def success_counts(table: pd.DataFrame, criterion: str = "paper") -> pd.DataFrame:
    """Per feature source: classes tried, successes with the oracle's cluster and with the
    most novel clusters (no labels) by the paper's rule and by the strict criterion, how often
    the oracle's cluster ranked first and in the top ``novelty_top`` by novelty, and the
    paper's count for the same architecture. ``successes`` and ``successes_without_oracle``
    are the headline counts, by ``criterion`` (``paper`` or ``strict``)."""
    if criterion not in CRITERIA:
        raise TomosiftError(f"criterion must be one of {', '.join(CRITERIA)}, not '{criterion}'")
    records = []
    for features, group in table.groupby("features", sort=False):
        model = str(group["model"].iloc[0])
        paper = next((v for k, v in PAPER_SUCCESSES.items()
                      if model.split("-")[0] == k), None)
        counts = {
            "paper": int(group["success"].astype(bool).sum()),
            "strict": int(group["success_strict"].astype(bool).sum()),
            "novel_paper": int(group["novel_success"].astype(bool).sum()),
            "novel_strict": int(group["novel_success_strict"].astype(bool).sum()),
        }
        records.append({"features": features, "classes": len(group),
                        "folds": int(group["fold"].nunique()), "criterion": criterion,
                        "successes": counts[criterion],
                        "successes_paper": counts["paper"],
                        "successes_strict": counts["strict"],
                        "successes_without_oracle": counts[f"novel_{criterion}"],
                        "successes_without_oracle_paper": counts["novel_paper"],
                        "successes_without_oracle_strict": counts["novel_strict"],
                        "oracle_cluster_ranked_first": int((group["oracle_novelty_rank"] == 1)
                                                           .sum()),
                        "oracle_cluster_in_novel_top": int(
                            (group["oracle_novelty_rank"] <= group["novel_top_clusters"]).sum()),
                        "paper_successes_of_22": paper})
    return pd.DataFrame(records)


def plot_recovery_panel(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Central slabs (5 voxels, x-y) of each left-out class's true density (top row) and of
    the average recovered with each feature source (one row per source), as paper Fig. 4."""
    from tomosift.io import read_mrc
    from tomosift.plots import plt, save_figure

    if table.empty:
        raise TomosiftError("no leave-one-out rows to show")
    classes = list(dict.fromkeys(table["class"]))
    sources = list(dict.fromkeys(table["features"]))
    figure, axes = plt.subplots(1 + len(sources), len(classes), squeeze=False,
                                figsize=(1.25 * len(classes) + 0.9, 1.35 * (1 + len(sources))))

    def show(ax, file):
        volume, _ = read_mrc(file)
        c = volume.shape[0] // 2
        ax.imshow(volume[c - 2 : c + 3].mean(axis=0), cmap="gray", origin="lower")

    for column, name in enumerate(classes):
        rows = table[table["class"] == name]
        show(axes[0, column], rows["truth"].iloc[0])
        axes[0, column].set_title(name, fontsize=7)
        for line, source in enumerate(sources, start=1):
            ax = axes[line, column]
            match = rows[rows["features"] == source]
            if not match.empty:
                show(ax, match["average"].iloc[0])
                row = match.iloc[0]
                ax.set_xlabel(f"{row['resolution_nm']:.1f} nm {'✓' if row['success'] else '✗'}",
                              fontsize=6, labelpad=1)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for line, label in enumerate(["truth", *sources]):
        axes[line, 0].set_ylabel(label, fontsize=7)
    figure.suptitle("Leave-one-out: true density vs recovered average (central slabs; "
                    "✓ FSC-0.5 resolution within the cutoff)", fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def _html_table(table: pd.DataFrame, counts: pd.DataFrame) -> str:
    shown = table.drop(columns=["average", "truth"])
    return ("<html><head><meta charset='utf-8'><title>Leave-one-out (Table S2)</title></head>"
            "<body><h2>Successes per feature source</h2>" + counts.to_html(index=False)
            + "<h2>Per left-out class (paper Table S2)</h2>"
            + shown.to_html(index=False, float_format=lambda v: f"{v:.3g}")
            + "</body></html>\n")


def write_views(row_paths: Sequence[str | os.PathLike], features: dict[str, str],
                clusters: dict[str, str], held_out: str | Sequence[str], outputs,
                embedding_points: int = 3000, seed: int = 1,
                criterion: str = "paper") -> pd.DataFrame:
    """All views of a leave-one-out run: ``summary`` (TSV), ``successes`` (TSV, headline
    counts by ``criterion``), ``html`` (Table S2), ``fig4`` (true vs recovered), ``figS1``
    (cluster-size histograms per source, for the first fold; their coefficient of variation
    and the counts of clusters of at most 10 and over 1000 members go into ``successes``
    too) and ``fig2`` (t-SNE of each source's test features, the first fold's held-out classes
    marked). ``features`` and ``clusters`` are the first fold's files, one
    per source; ``held_out`` that fold's classes. ``outputs`` maps those names to paths.
    Returns the counts."""
    from tomosift.discovery.cluster import plot_cluster_size_histograms, size_statistics
    from tomosift.discovery.embed import plot_embedding, tsne_2d
    from tomosift.discovery.features import read_features
    from tomosift.io import write_text
    from tomosift.plots import save_figure

    held_out = [held_out] if isinstance(held_out, str) else list(held_out)
    table = summarise(row_paths, outputs["summary"])
    counts = success_counts(table, criterion)
    sizes = {name: read_cluster_table(path)["cluster"].value_counts().to_numpy()
             for name, path in clusters.items()}
    statistics = {name: size_statistics(values) for name, values in sizes.items()}
    counts["cluster_size_cv"] = [statistics[f]["cv"] for f in counts["features"]]
    counts["clusters_le_10"] = [statistics[f]["n_small"] for f in counts["features"]]
    counts["clusters_gt_1000"] = [statistics[f]["n_large"] for f in counts["features"]]
    with atomic_path(outputs["successes"]) as tmp:
        counts.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    write_text(outputs["html"], _html_table(table, counts))
    plot_recovery_panel(table, outputs["fig4"])
    plot_cluster_size_histograms(outputs["figS1"], sizes,
                                 f"Cluster sizes of the test split ({', '.join(held_out)} "
                                 "left out)")
    panels = []
    for name, path in features.items():
        feature_set = read_features(path)
        rows = feature_set.rows("test")
        xy, chosen = tsne_2d(feature_set.features[rows], seed, max_points=embedding_points)
        panels.append((name, xy, feature_set.labels[rows][chosen], feature_set.class_names))
    for name, xy, labels, names in panels:  # one PNG per source, then tiled
        plot_embedding(Path(outputs["fig2"]).with_name(f"fig2_embedding_{name}.png"), xy,
                       labels, names, held_out, f"t-SNE of {name} features")
    _tile_images([Path(outputs["fig2"]).with_name(f"fig2_embedding_{name}.png")
                  for name, *_ in panels], outputs["fig2"], save_figure)
    return counts


def _tile_images(paths: Sequence[Path], out_path, save_figure) -> None:
    from tomosift.plots import plt

    images = [plt.imread(p) for p in paths]
    figure, axes = plt.subplots(1, len(images), figsize=(5.0 * len(images), 5.0), squeeze=False)
    for ax, image in zip(axes[0], images, strict=True):
        ax.imshow(image)
        ax.axis("off")
    figure.tight_layout()
    save_figure(figure, out_path)
