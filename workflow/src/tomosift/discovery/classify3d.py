"""Reference-free classification of subtomograms under the missing wedge.

Alternating alignment, assignment and averaging (Xu et al. 2012; the paper's Section 2.3 step
after subdivision) with no external reference, run as the gold-standard, resolution-limited
refinement of :mod:`tomosift.discovery.refine`: two independently refined half-sets per
class, references FSC-weighted and low-passed at the resolution the half-sets reproduce,
alignment on those shells only, a global search first and then local searches with
probability-weighted poses, soft particle masks, and each particle's wedge and CTF (or its
Fourier weights) in its alignment and its share of the average. K > 1 classes start from K
members far apart in rotation-invariant feature space; one class from the best of several
random-subset starts.

Output: a :class:`ClassificationResult` with the averages and half-maps, the FSC between the
halves, each particle's class, pose and score, and one :class:`IterationRecord` per iteration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomosift.discovery.align import AlignSettings
from tomosift.discovery.refine import Observations, RefineSettings, refine
from tomosift.errors import TomosiftError


@dataclass(frozen=True)
class ClassifySettings:
    """How reference-free classification runs (the rest: :class:`RefineSettings` defaults).

    ``mask_threshold``: in a class average's coverage, a frequency counts as observed where
    the summed weights reach this fraction of their maximum. ``workers``: threads (the
    result is the same bytes for any number).
    """

    classes: int = 3
    iterations: int = 5
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    seed: int = 1
    mask_threshold: float = 0.05
    align: AlignSettings = field(default_factory=AlignSettings)
    workers: int = 1

    def __post_init__(self) -> None:
        if self.classes < 1 or self.iterations < 1:
            raise TomosiftError("classes and iterations must be >= 1")

    def refine_settings(self) -> RefineSettings:
        return RefineSettings(classes=self.classes, iterations=self.iterations,
                              tilt_min_deg=self.tilt_min_deg, tilt_max_deg=self.tilt_max_deg,
                              seed=self.seed, align=self.align, workers=self.workers)


@dataclass
class IterationRecord:
    """One iteration: mean constrained correlation, class sizes, reassignments, the alignment
    limit (Fourier shell) it used and the half-set resolution shell per class after it."""

    iteration: int
    mean_score: float
    class_sizes: list[int]
    changed: int
    limit_shell: int = 0
    resolution_shells: list[int] = field(default_factory=list)


@dataclass
class ClassificationResult:
    """Class averages (K, n, n, n), half-maps (K, 2, n, n, n), half-set FSC (K, n // 2 + 1),
    per-particle classes (N,) (0-based), half-sets (N,), poses and scores."""

    averages: np.ndarray
    classes: np.ndarray
    rotations: np.ndarray  # (N, 3, 3): transform(particle, R, t) lies on its class average
    shifts_voxels: np.ndarray  # (N, 3) x, y, z
    scores: np.ndarray  # (N,)
    history: list[IterationRecord]
    summed_masks: np.ndarray  # (K, n, n, n // 2 + 1) summed weights (coverage)
    half_maps: np.ndarray | None = None
    fsc: np.ndarray | None = None
    halves: np.ndarray | None = None

    def observed(self, c: int, threshold: float = 0.05) -> np.ndarray:
        """(n, n, n // 2 + 1) float32 0/1: the frequencies class ``c``'s average observed."""
        summed = self.summed_masks[c]
        return (summed >= threshold * max(float(summed.max()), 1e-30)).astype(np.float32)

    def resolution_nm(self, c: int, voxel_size_nm: float, threshold: float = 0.143) -> float:
        """Half-set (gold-standard) resolution of class ``c`` at FSC ``threshold`` (nm)."""
        from tomosift.discovery.fsc import resolution_at

        if self.fsc is None:
            return float("nan")
        shells = np.arange(self.fsc.shape[1])
        box = self.averages.shape[1]
        return resolution_at(shells, self.fsc[c], threshold, box, voxel_size_nm)


def classify(volumes: np.ndarray, settings: ClassifySettings = ClassifySettings(),
             progress: bool = True, observations: Observations | None = None
             ) -> ClassificationResult:
    """Reference-free classification of (N, n, n, n) particles (bright density) into
    ``settings.classes`` classes; see the module docstring. ``observations``: what each
    particle observed (default: the settings' tilt range, no CTF)."""
    volumes = np.asarray(volumes, dtype=np.float32)
    k = settings.classes
    if volumes.ndim == 4 and len(volumes) == 1 and k == 1:  # one member: its own average
        box = volumes.shape[1]
        return ClassificationResult(
            volumes.copy(), np.zeros(1, dtype=np.int64), np.eye(3)[None], np.zeros((1, 3)),
            np.ones(1), [], np.ones((1, box, box, box // 2 + 1), dtype=np.float32))
    if volumes.ndim != 4 or len(volumes) < 2 * k:
        raise TomosiftError(f"need at least {2 * k} cubic subtomograms for {k} classes in two "
                            f"half-sets, got {len(volumes)}")
    result = refine(volumes, settings.refine_settings(), observations, progress)
    history = [IterationRecord(h["iteration"], h["mean_score"], h["class_sizes"], h["changed"],
                               h["limit_shell"], h["resolution_shell"]) for h in result.history]
    return ClassificationResult(result.averages, result.classes, result.rotations,
                                result.shifts_voxels, result.scores, history,
                                result.summed_weights, result.half_maps, result.fsc,
                                result.halves)


def write_classification(out_dir: str | os.PathLike, result: ClassificationResult,
                         ids: Sequence[str], voxel_size_nm: float,
                         labels: Sequence[str] | None = None) -> dict[str, Path]:
    """Write a classification: ``class_<k>.mrc`` (k from 1), its half-maps
    ``class_<k>_half1.mrc`` and ``class_<k>_half2.mrc`` and their FSC ``class_<k>_fsc.tsv``
    (and ``.png``),
    ``members.tsv`` (with each particle's half-set), ``members.star`` (RELION conventions,
    ``rlnRandomSubset``) and ``iterations/scores.tsv`` (per iteration: mean score,
    reassignments, the alignment limit shell, class sizes, half-set resolution shells).

    Returns the paths written, by kind.
    """
    import pandas as pd

    from tomosift.discovery.fsc import plot_fsc, write_fsc_table
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
        if result.half_maps is not None:
            for h in (1, 2):
                path = out / f"class_{c}_half{h}.mrc"
                write_mrc(path, result.half_maps[c - 1, h - 1], voxel_size_nm)
                written[f"class_{c}_half{h}"] = path
        if result.fsc is not None:
            shells = np.arange(result.fsc.shape[1])
            box = result.averages.shape[1]
            write_fsc_table(out / f"class_{c}_fsc.tsv", shells, result.fsc[c - 1], box,
                            voxel_size_nm)
            written[f"class_{c}_fsc"] = out / f"class_{c}_fsc.tsv"
            resolution = result.resolution_nm(c - 1, voxel_size_nm)
            plot_fsc(out / f"class_{c}_fsc.png", {"half-set 1 vs 2": (shells, result.fsc[c - 1])},
                     box, voxel_size_nm, f"class {c}: gold-standard {resolution:.2f} nm at 0.143")
            written[f"class_{c}_fsc_plot"] = out / f"class_{c}_fsc.png"
    rows = []
    for i, particle in enumerate(ids):
        rot, tilt, psi, origin = relion_pose(result.rotations[i], result.shifts_voxels[i])
        row = {"particle": particle, "class": int(result.classes[i]) + 1,
               "score": float(result.scores[i]), "rot_deg": rot, "tilt_deg": tilt,
               "psi_deg": psi, "origin_x_nm": origin[0] * voxel_size_nm,
               "origin_y_nm": origin[1] * voxel_size_nm,
               "origin_z_nm": origin[2] * voxel_size_nm}
        if result.halves is not None:
            row["half_set"] = int(result.halves[i]) + 1
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
    if "half_set" in table.columns:
        star["rlnRandomSubset"] = table["half_set"]
    write_star(out / "members.star", {
        "optics": relion_optics(voxel_size_nm, result.averages.shape[1]), "particles": star})
    written["star"] = out / "members.star"
    n_classes = len(result.averages)
    lines = ["iteration\tmean_score\tchanged\tlimit_shell\t" + "\t".join(
        f"size_class_{c}" for c in range(1, n_classes + 1)) + "\t" + "\t".join(
        f"resolution_shell_class_{c}" for c in range(1, n_classes + 1))]
    for record in result.history:
        resolution = record.resolution_shells or [0] * n_classes
        lines.append(f"{record.iteration}\t{record.mean_score:.6f}\t{record.changed}\t"
                     f"{record.limit_shell}\t" + "\t".join(str(s) for s in record.class_sizes)
                     + "\t" + "\t".join(str(r) for r in resolution))
    write_text(out / "iterations" / "scores.tsv", "\n".join(lines) + "\n")
    written["scores"] = out / "iterations" / "scores.tsv"
    return written
