"""Reference-free classification of subtomograms under the missing wedge.

Alternating alignment, assignment and averaging (Xu et al. 2012; the paper's Section 2.3 step
after subdivision): there is no external reference.

1. Seeds: the K particles picked by a seeded farthest-point walk in rotation-invariant (RIF)
   feature space (the first at random), so that the starting references differ from one
   another as much as the data allow; each seed, with its own wedge, is a class's first
   reference.
2. Each iteration aligns every particle to every class reference over all of SO(3) under the
   constrained correlation (:mod:`.align`), assigns it to the best-scoring class, and
   re-averages each class from its members' poses and wedges (:mod:`.average`). A class
   left empty is re-seeded with the particle that fits its own class worst.
3. A class average's wedge is its summed Fourier mask: frequencies observed by too few members
   are treated as missing when the average is the reference.

Output: a :class:`ClassificationResult` with the averages, each particle's class, pose and
score, and one :class:`IterationRecord` per iteration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomosift.discovery.align import Alignment, AlignSettings, align_prepared, prepare
from tomosift.discovery.average import average
from tomosift.discovery.wedge import wedge_mask
from tomosift.errors import TomosiftError
from tomosift.progress import progress_bar


@dataclass(frozen=True)
class ClassifySettings:
    """How reference-free classification runs.

    ``mask_threshold``: in the reference mask of a class average, a frequency counts as
    observed where the summed member masks reach this fraction of the member count.
    """

    classes: int = 3
    iterations: int = 5
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    seed: int = 1
    mask_threshold: float = 0.05
    align: AlignSettings = field(default_factory=AlignSettings)

    def __post_init__(self) -> None:
        if self.classes < 1 or self.iterations < 1:
            raise TomosiftError("classes and iterations must be >= 1")


@dataclass
class IterationRecord:
    """Scores of one iteration: mean constrained correlation, class sizes, reassignments."""

    iteration: int
    mean_score: float
    class_sizes: list[int]
    changed: int


@dataclass
class ClassificationResult:
    """Class averages (K, n, n, n), per-particle classes (N,) (0-based), poses and scores."""

    averages: np.ndarray
    classes: np.ndarray
    rotations: np.ndarray  # (N, 3, 3): transform(particle, R, t) lies on its class average
    shifts_voxels: np.ndarray  # (N, 3) x, y, z
    scores: np.ndarray  # (N,)
    history: list[IterationRecord]
    summed_masks: np.ndarray  # (K, n, n, n // 2 + 1)


def _seeds(volumes: np.ndarray, k: int, seed: int) -> list[int]:
    from tomosift.classify.rif import RifSettings, rif_features

    features = rif_features(volumes, RifSettings(normalize=True))
    features = (features - features.mean(0)) / np.maximum(features.std(0), 1e-12)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(volumes)))]
    distance = np.linalg.norm(features - features[chosen[0]], axis=1)
    while len(chosen) < k:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(features - features[chosen[-1]], axis=1))
    return chosen


def classify(volumes: np.ndarray, settings: ClassifySettings = ClassifySettings(),
             progress: bool = True) -> ClassificationResult:
    """Reference-free classification of (N, n, n, n) particles (bright density) into
    ``settings.classes`` classes; see the module docstring."""
    volumes = np.asarray(volumes, dtype=np.float32)
    n_particles = len(volumes)
    k = settings.classes
    if volumes.ndim != 4 or n_particles < k:
        raise TomosiftError(f"need at least {k} cubic subtomograms for {k} classes, "
                            f"got {n_particles}")
    n = volumes.shape[1]
    member_mask = wedge_mask(n, settings.tilt_min_deg, settings.tilt_max_deg)
    prepared = [prepare(v, member_mask, settings.align) for v in volumes]
    references = [prepared[i] for i in _seeds(volumes, k, settings.seed)]
    classes = np.full(n_particles, -1, dtype=np.int64)
    rotations = np.tile(np.eye(3), (n_particles, 1, 1))
    shifts = np.zeros((n_particles, 3))
    scores = np.zeros(n_particles)
    history: list[IterationRecord] = []
    averages = np.zeros((k, n, n, n), dtype=np.float32)
    summed = np.zeros((k, *member_mask.shape), dtype=np.float32)
    for iteration in range(1, settings.iterations + 1):
        previous = classes.copy()
        bar = progress_bar(total=n_particles * k, desc=f"classification {iteration}/"
                           f"{settings.iterations}", unit="alignment", enabled=progress)
        with bar:
            for i, particle in enumerate(prepared):
                best: Alignment | None = None
                for c, reference in enumerate(references):
                    result = align_prepared(reference, particle, settings.align)
                    if best is None or result.score > best.score:
                        best, classes[i] = result, c
                    bar.update(1)
                rotations[i], shifts[i], scores[i] = best.rotation, best.shift_voxels, best.score
        for c in range(k):
            if not np.any(classes == c):  # re-seed an empty class with the worst fit
                worst = int(np.argmin(np.where(classes >= 0, scores, np.inf)))
                classes[worst], rotations[worst], shifts[worst] = c, np.eye(3), 0.0
        references = []
        for c in range(k):
            members = np.flatnonzero(classes == c)
            averages[c], summed[c] = average(
                volumes[members], rotations[members], shifts[members],
                tilt_min_deg=settings.tilt_min_deg, tilt_max_deg=settings.tilt_max_deg)
            reference_mask = (summed[c] >= settings.mask_threshold * len(members))
            references.append(prepare(averages[c], reference_mask.astype(np.float32),
                                      settings.align))
        history.append(IterationRecord(iteration, float(scores.mean()),
                                       np.bincount(classes, minlength=k).tolist(),
                                       int(np.sum(classes != previous))))
    return ClassificationResult(averages, classes, rotations, shifts, scores, history, summed)


def write_classification(out_dir: str | os.PathLike, result: ClassificationResult,
                         ids: Sequence[str], voxel_size_nm: float,
                         labels: Sequence[str] | None = None) -> dict[str, Path]:
    """Write a classification: ``class_<k>.mrc`` (k from 1), ``members.tsv``,
    ``members.star`` (RELION conventions) and ``iterations/scores.tsv``.

    Returns the paths written, by kind.
    """
    import pandas as pd

    from tomosift.discovery.rotations import relion_pose
    from tomosift.io import (
        ANGSTROM_PER_NM,
        atomic_path,
        relion_optics,
        write_mrc,
        write_star,
        write_text,
    )

    out = Path(out_dir)
    written: dict[str, Path] = {}
    for c, volume in enumerate(result.averages, start=1):
        write_mrc(out / f"class_{c}.mrc", volume, voxel_size_nm)
        written[f"class_{c}"] = out / f"class_{c}.mrc"
    rows = []
    for i, particle in enumerate(ids):
        rot, tilt, psi, origin = relion_pose(result.rotations[i], result.shifts_voxels[i])
        row = {"particle": particle, "class": int(result.classes[i]) + 1,
               "score": float(result.scores[i]), "rot_deg": rot, "tilt_deg": tilt,
               "psi_deg": psi, "origin_x_nm": origin[0] * voxel_size_nm,
               "origin_y_nm": origin[1] * voxel_size_nm,
               "origin_z_nm": origin[2] * voxel_size_nm}
        if labels is not None:
            row["true_class"] = labels[i]
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(out / "members.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    written["members"] = out / "members.tsv"
    star = pd.DataFrame({
        "rlnImageName": table["particle"],
        "rlnClassNumber": table["class"],
        "rlnAngleRot": table["rot_deg"], "rlnAngleTilt": table["tilt_deg"],
        "rlnAnglePsi": table["psi_deg"],
        "rlnOriginXAngst": table["origin_x_nm"] * ANGSTROM_PER_NM,
        "rlnOriginYAngst": table["origin_y_nm"] * ANGSTROM_PER_NM,
        "rlnOriginZAngst": table["origin_z_nm"] * ANGSTROM_PER_NM,
        "rlnOpticsGroup": 1,
    })
    write_star(out / "members.star", {
        "optics": relion_optics(voxel_size_nm, result.averages.shape[1]), "particles": star})
    written["star"] = out / "members.star"
    lines = ["iteration\tmean_score\tchanged\t" + "\t".join(
        f"size_class_{c}" for c in range(1, len(result.averages) + 1))]
    for record in result.history:
        lines.append(f"{record.iteration}\t{record.mean_score:.6f}\t{record.changed}\t"
                     + "\t".join(str(s) for s in record.class_sizes))
    write_text(out / "iterations" / "scores.tsv", "\n".join(lines) + "\n")
    written["scores"] = out / "iterations" / "scores.tsv"
    return written
