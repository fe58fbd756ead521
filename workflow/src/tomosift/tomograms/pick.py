"""Template-free particle picking by a 3D Difference of Gaussians (Xu et al. 2017, §3.1.2).

The paper picks its ground-truth particles "similar to (Pei et al., 2016) through convoluting
the tomograms with 3D Difference of Gaussian function with scaling factor of σ = 7 nm and
scaling factor ratio K = 1.1". Here:

1. ``difference_of_gaussians``: ``G_σ * v − G_{Kσ} * v`` of the tomogram ``v`` (negated first
   when particles are dark), a band-pass whose response peaks at the centre of a blob of
   radius about √3·σ;
2. the response is turned into a robust z-score, ``(r − median) / (1.4826 · MAD)`` over the
   voxels away from the faces, so that the threshold does not depend on the tomogram's
   intensity scale (the MAD is the noise's spread as long as particles fill less than half
   the volume);
3. ``find_peaks``: local maxima of the z-score above the threshold, at least
   ``min_distance`` apart (the higher one wins), refined to sub-voxel by a 3-point parabola
   per axis.

Positions are (x, y, z) in voxels of the tomogram (voxel i covers [i − 0.5, i + 0.5]).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from tomosift.errors import TomosiftError

POLARITIES = ("dark", "white")
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class PickSettings:
    """How ``pick`` finds particles.

    Attributes:
        sigma_nm: the smaller Gaussian's σ (the paper's 7 nm).
        k: ratio of the larger Gaussian's σ to the smaller one's (the paper's 1.1).
        min_distance_nm: least distance between two picks; None: σ (two blobs whose centres
            are closer than the filter's own scale cannot be told apart by it).
        edge_nm: picks closer than this to a face are dropped; None: K·σ (the smallest σ when
            multi-scale), the reach of the larger Gaussian, within which the filter sees the
            mirrored border.
        threshold: least robust z-score of the DoG response at a pick (median + threshold ·
            1.4826 · MAD of the response). 5: on pure noise volumes the largest local maximum
            stays below 5 (measured: ``tests/test_pick.py``, benchmark in ``benchmarks/pick.py``).
        max_picks: keep at most this many picks (highest score first); None: all.
        polarity: "dark" (particles darker than the background, as recorded) or "white".
        refine: sub-voxel refinement of each peak by a 3-point parabola per axis.
        sigma_max_nm: None: one scale (the paper's). Else a multi-scale DoG: σ from
            ``sigma_nm`` to ``sigma_max_nm`` in steps of at most √2, each scale's peaks
            thresholded on that scale's own robust z (so the threshold keeps its noise
            meaning), then blob non-maximum suppression, largest scale first: a kept peak of
            blob radius r_i = √3·σ_i removes every later peak j with centres closer than
            r_i + r_j (two particles do not overlap; domains of a large complex lie inside its
            blob). A blob of radius r responds most at σ ≈ r / √3, so particles of radii
            r_min..r_max want σ = r_min / √3 .. r_max / √3. On the simulated tomograms of
            benchmarks/pick.py it finds the small complexes the paper's scale misses (recall
            ≥ 0.97) but keeps CTF-fringe peaks 1.5-3 radii from particles (precision 0.49-0.86),
            so the single paper scale stays the default.
    """

    sigma_nm: float = 7.0
    k: float = 1.1
    min_distance_nm: float | None = None
    edge_nm: float | None = None
    threshold: float = 5.0
    max_picks: int | None = None
    polarity: str = "dark"
    refine: bool = True
    sigma_max_nm: float | None = None

    def sigmas_nm(self) -> list[float]:
        """The DoG scales, smallest first."""
        if self.sigma_max_nm is None or self.sigma_max_nm <= self.sigma_nm:
            return [self.sigma_nm]
        steps = math.ceil(math.log(self.sigma_max_nm / self.sigma_nm, math.sqrt(2)) - 1e-6)
        ratio = (self.sigma_max_nm / self.sigma_nm) ** (1 / steps)
        return [self.sigma_nm * ratio**i for i in range(steps + 1)]

    def min_distance_voxels(self, voxel_size_nm: float) -> float:
        nm = self.sigma_nm if self.min_distance_nm is None else self.min_distance_nm
        return nm / voxel_size_nm

    def edge_voxels(self, voxel_size_nm: float) -> float:
        nm = self.k * self.sigmas_nm()[0] if self.edge_nm is None else self.edge_nm
        return nm / voxel_size_nm


def difference_of_gaussians(volume: np.ndarray, sigma_voxels: float, k: float,
                            polarity: str) -> np.ndarray:
    """The DoG response ``G_σ * v − G_{kσ} * v`` of a (Z, Y, X) volume, float32 (Z, Y, X),
    oriented so that particles give positive values (a dark volume is negated first).

    Faces are mirrored (``reflect``); the response within about kσ of a face is less reliable.
    """
    if polarity not in POLARITIES:
        raise TomosiftError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if sigma_voxels <= 0 or k <= 1:
        raise TomosiftError(f"DoG needs sigma > 0 and k > 1, got sigma {sigma_voxels:g} voxels, "
                            f"k {k:g}")
    data = np.asarray(volume, dtype=np.float32)
    if polarity == "dark":
        data = -data
    small = ndimage.gaussian_filter(data, sigma_voxels, mode="reflect", truncate=4.0)
    large = ndimage.gaussian_filter(data, k * sigma_voxels, mode="reflect", truncate=4.0)
    small -= large
    return small


def robust_z(response: np.ndarray, edge_voxels: float = 0.0) -> np.ndarray:
    """(Z, Y, X) float32 ``(r − median) / (1.4826 · MAD)``, the statistics taken over the
    voxels at least ``edge_voxels`` from every face (all voxels if none are)."""
    inner = response[_interior(response.shape, edge_voxels)]
    if inner.size == 0:
        inner = response
    sample = inner.ravel()
    if sample.size > 2_000_000:  # a regular subsample: the same statistics, faster
        sample = sample[:: sample.size // 1_000_000]
    median = float(np.median(sample))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(sample - median)))
    if not spread > 0:
        spread = float(np.std(sample)) or 1.0
    return ((response - np.float32(median)) / np.float32(spread)).astype(np.float32, copy=False)


def _interior(shape: Sequence[int], edge_voxels: float) -> tuple[slice, ...]:
    margin = max(0, math.ceil(edge_voxels))
    return tuple(slice(margin, max(margin, n - margin)) for n in shape)


def find_peaks(response: np.ndarray, min_distance_voxels: float, edge_voxels: float,
               threshold: float, refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a (Z, Y, X) response above ``threshold``.

    Peaks closer than ``edge_voxels`` to a face (voxel centres 0 and n − 1) are dropped; of two
    peaks closer than ``min_distance_voxels`` the higher is kept.

    Returns:
        positions (P, 3) x, y, z in voxels (float64; sub-voxel when ``refine``) and scores
        (P,) (the response at the peak voxel), sorted by score, highest first.
    """
    response = np.asarray(response, dtype=np.float32)
    # The inscribed cube of the exclusion ball: every true peak survives, the rest is greedy.
    half = max(1, math.floor(max(min_distance_voxels, 1.0) / math.sqrt(3)))
    local_max = ndimage.maximum_filter(response, size=2 * half + 1, mode="nearest")
    candidate = (response >= local_max) & (response > threshold)
    keep = np.zeros_like(candidate)
    inner = _interior(response.shape, edge_voxels)
    keep[inner] = candidate[inner]
    zyx = np.argwhere(keep)
    scores = response[tuple(zyx.T)].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    zyx, scores = zyx[order], scores[order]
    chosen = _suppress(zyx.astype(np.float64), min_distance_voxels)
    zyx, scores = zyx[chosen], scores[chosen]
    positions = zyx.astype(np.float64)
    if refine and len(zyx):
        positions += _parabola_offsets(response, zyx)
    return positions[:, ::-1].copy(), scores


def _suppress(points: np.ndarray, min_distance: float | np.ndarray,
              pairwise: bool = False) -> np.ndarray:
    """Indices of points (sorted best first) kept by greedy non-maximum suppression: a kept
    point removes the later ones closer than its distance (one for all, or (P,) per point),
    or with ``pairwise`` closer than the sum of both points' distances (overlapping blobs)."""
    radii = np.broadcast_to(np.asarray(min_distance, dtype=np.float64), (len(points),))
    if len(points) == 0 or radii.max() <= 0:
        return np.arange(len(points))
    tree = cKDTree(points)
    reach = radii.max() if pairwise else 0.0
    removed = np.zeros(len(points), dtype=bool)
    kept = []
    for i in range(len(points)):
        if removed[i]:
            continue
        kept.append(i)
        near = np.asarray(tree.query_ball_point(points[i], radii[i] + reach), np.int64)
        distance = np.linalg.norm(points[near] - points[i], axis=1)
        too_close = (distance < radii[i] + radii[near] if pairwise
                     else distance <= radii[i] - 1e-9)
        removed[near[too_close]] = True
    return np.asarray(kept, dtype=np.int64)


def _parabola_offsets(response: np.ndarray, zyx: np.ndarray) -> np.ndarray:
    """(P, 3) z, y, x sub-voxel offsets (within ±0.5) of the vertex of a 3-point parabola
    through each peak and its two neighbours along each axis."""
    offsets = np.zeros(zyx.shape, dtype=np.float64)
    for axis in range(3):
        n = response.shape[axis]
        inside = (zyx[:, axis] > 0) & (zyx[:, axis] < n - 1)
        low, high = zyx[inside].copy(), zyx[inside].copy()
        low[:, axis] -= 1
        high[:, axis] += 1
        centre = response[tuple(zyx[inside].T)].astype(np.float64)
        minus = response[tuple(low.T)].astype(np.float64)
        plus = response[tuple(high.T)].astype(np.float64)
        curvature = minus - 2 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        offsets[inside, axis] = np.clip(shift, -0.5, 0.5)
    return offsets


def pick(volume: np.ndarray, voxel_size_nm: float,
         settings: PickSettings = PickSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Particles of a (Z, Y, X) tomogram with voxel edge ``voxel_size_nm``.

    Returns:
        positions (P, 3) x, y, z in voxels and scores (P,) (robust z-score of the DoG
        response), highest score first; empty arrays when nothing passes the threshold.
    """
    if voxel_size_nm <= 0:
        raise TomosiftError(f"voxel size must be > 0, got {voxel_size_nm:g} nm")
    edge = settings.edge_voxels(voxel_size_nm)
    min_distance = settings.min_distance_voxels(voxel_size_nm)
    sigmas = settings.sigmas_nm()
    if len(sigmas) == 1:
        response = robust_z(difference_of_gaussians(volume, sigmas[0] / voxel_size_nm,
                                                     settings.k, settings.polarity), edge)
        positions, scores = find_peaks(response, min_distance, edge, settings.threshold,
                                       settings.refine)
    else:
        positions, scores = _multiscale_peaks(volume, voxel_size_nm, sigmas, settings, edge)
    if settings.max_picks is not None:
        positions, scores = positions[: settings.max_picks], scores[: settings.max_picks]
    return positions, scores


def _multiscale_peaks(volume: np.ndarray, voxel_size_nm: float, sigmas_nm: Sequence[float],
                      settings: PickSettings, edge_voxels: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the DoG at every scale (each its own robust z ≥ threshold), then coarse-first
    blob non-maximum suppression: sorted by scale (largest first), then z, a kept peak removes
    every later one whose blob overlaps its own (centres closer than r_i + r_j, r = √3·σ).

    Why the largest scale first, not the strongest response: in a CTF-filtered tomogram the
    domains of a large complex respond as strongly at small σ as a small complex does (raw,
    scale-normalised DoG or z-score alike), so only "this blob is part of a larger one" tells
    them apart (benchmarks/pick.py)."""
    positions, scores, radii = [], [], []
    base = settings.min_distance_voxels(voxel_size_nm)
    for sigma_nm in sigmas_nm:
        response = robust_z(difference_of_gaussians(volume, sigma_nm / voxel_size_nm,
                                                    settings.k, settings.polarity), edge_voxels)
        found, z = find_peaks(response, base * sigma_nm / sigmas_nm[0], edge_voxels,
                              settings.threshold, settings.refine)
        del response
        positions.append(found)
        scores.append(z)
        radii.append(np.full(len(z), math.sqrt(3) * sigma_nm / voxel_size_nm))
    # Later scales are larger: reverse the list so that the largest come first.
    points = np.concatenate(positions[::-1])
    z_all, r_all = np.concatenate(scores[::-1]), np.concatenate(radii[::-1])
    order = np.lexsort((-z_all, -r_all))
    points, z_all, r_all = points[order], z_all[order], r_all[order]
    if len(points) == 0:
        return points, z_all
    kept = _suppress(points, r_all, pairwise=True)
    points, z_all = points[kept], z_all[kept]
    best = np.argsort(-z_all, kind="stable")
    return points[best], z_all[best]


def match_picks(picked_xyz: np.ndarray, truth_xyz: np.ndarray,
                tolerance_voxels: float = 2.0) -> np.ndarray:
    """(P,) index of the truth particle matched to each pick, or −1.

    One-to-one: among the pairs within ``tolerance_voxels`` (Euclidean), the assignment that
    matches the most picks, and of those the one with the least total distance.
    """
    picked = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    matched = np.full(len(picked), -1, dtype=np.int64)
    if len(picked) == 0 or len(truth) == 0:
        return matched
    pairs = cKDTree(picked).sparse_distance_matrix(cKDTree(truth), tolerance_voxels,
                                                   output_type="ndarray")
    if len(pairs) == 0:
        return matched
    rows, row_index = np.unique(pairs["i"], return_inverse=True)
    cols, col_index = np.unique(pairs["j"], return_inverse=True)
    # A missing pair costs more than any set of real pairs: the most matches first.
    forbidden = 1.0 + len(pairs) * (tolerance_voxels + 1.0)
    cost = np.full((len(rows), len(cols)), forbidden)
    cost[row_index, col_index] = pairs["v"]
    assigned_rows, assigned_cols = linear_sum_assignment(cost)
    real = cost[assigned_rows, assigned_cols] < forbidden
    matched[rows[assigned_rows[real]]] = cols[assigned_cols[real]]
    return matched


def pick_scores(picked_xyz: np.ndarray, truth_xyz: np.ndarray, truth_labels: np.ndarray,
                class_names: Sequence[str], tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """Recall per class and overall precision of picks against known particles.

    Returns:
        one row per class and a last row "all": ``class``, ``truth`` (particles), ``found``
        (matched within ``tolerance_voxels``), ``recall``; on the "all" row also ``picks``,
        ``false_picks`` (unmatched picks) and ``precision`` (NaN on class rows).
    """
    labels = np.asarray(truth_labels, dtype=np.int64).reshape(-1)
    matched = match_picks(picked_xyz, truth_xyz, tolerance_voxels)
    found_truth = np.zeros(len(labels), dtype=bool)
    found_truth[matched[matched >= 0]] = True
    rows = []
    for c, name in enumerate(class_names):
        members = labels == c
        count, found = int(members.sum()), int(found_truth[members].sum())
        rows.append({"class": str(name), "truth": count, "found": found,
                     "recall": found / count if count else math.nan})
    n_picks = len(matched)
    true_picks = int((matched >= 0).sum())
    rows.append({"class": "all", "truth": len(labels), "found": int(found_truth.sum()),
                 "recall": found_truth.mean() if len(labels) else math.nan,
                 "picks": n_picks, "false_picks": n_picks - true_picks,
                 "precision": true_picks / n_picks if n_picks else math.nan})
    table = pd.DataFrame(rows, columns=["class", "truth", "found", "recall", "picks",
                                        "false_picks", "precision"])
    return table


def write_picks(path: str | os.PathLike, positions_xyz: np.ndarray, scores: np.ndarray,
                tomogram_shape_zyx: Sequence[int], voxel_size_nm: float, tomo_name: str,
                box_voxels: int = 40) -> None:
    """Write picks as a RELION 5 particles STAR file (atomically), the score as
    ``rlnAutopickFigureOfMerit``; the optics block names the box extraction will cut."""
    from tomosift.tomograms.relion import particle_table, write_particles_star

    size_xyz = tuple(int(n) for n in tomogram_shape_zyx)[::-1]
    table = particle_table(tomo_name, positions_xyz, size_xyz, voxel_size_nm,
                           extra={"rlnAutopickFigureOfMerit": np.asarray(scores, np.float64)})
    write_particles_star(path, table, voxel_size_nm, box_voxels)


def pick_tomogram(tomogram_path: str | os.PathLike, out_path: str | os.PathLike,
                  settings: PickSettings = PickSettings(), tomo_name: str | None = None,
                  box_voxels: int = 40) -> int:
    """Pick one tomogram MRC into a particles STAR file; returns the number of picks.

    ``tomo_name``: rlnTomoName (default: the file's stem). Raises TomosiftError naming the
    file when nothing passes the threshold (and writes nothing).
    """
    from pathlib import Path

    from tomosift.io import read_mrc

    volume, voxel_size_nm = read_mrc(tomogram_path)
    positions, scores = pick(volume, voxel_size_nm, settings)
    if len(positions) == 0:
        raise TomosiftError(f"{tomogram_path}: no particles found (no DoG peak above the "
                            f"threshold, robust z-score {settings.threshold:g}; try a lower "
                            "threshold or the other polarity)")
    name = tomo_name if tomo_name is not None else Path(tomogram_path).stem
    write_picks(out_path, positions, scores, volume.shape, voxel_size_nm, name, box_voxels)
    return len(positions)


def read_truth(truth_path: str | os.PathLike, tomogram_size_xyz: Sequence[int] | None = None,
               voxel_size_nm: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """True particles from a STAR file: (N, 3) x, y, z voxels, (N,) 0-based labels and class
    names (:func:`tomosift.tomograms.relion.class_labels`; one class "particle" without
    rlnClassNumber)."""
    from tomosift.tomograms.relion import class_labels, coordinates_of, read_particles_star

    particles, _, class_names = read_particles_star(truth_path)
    xyz = coordinates_of(particles, truth_path, tomogram_size_xyz, voxel_size_nm)
    if "rlnClassNumber" not in particles.columns:
        return xyz, np.zeros(len(particles), dtype=np.int64), ["particle"]
    labels, names = class_labels(particles["rlnClassNumber"].to_numpy(), class_names,
                                 truth_path)
    return xyz, labels, names


def score_pick_files(picks_path: str | os.PathLike, truth_path: str | os.PathLike,
                     tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """``pick_scores`` of a picks STAR file against a truth STAR file (class names from the
    truth's tomosift_classes block)."""
    from tomosift.tomograms.relion import coordinates_of, read_particles_star

    picks, _, _ = read_particles_star(picks_path)
    picked = coordinates_of(picks, picks_path)
    truth, labels, names = read_truth(truth_path)
    return pick_scores(picked, truth, labels, names, tolerance_voxels)
