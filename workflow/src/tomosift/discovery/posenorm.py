"""Pose normalisation of subtomograms, the baseline of Xu et al. (2015, IEEE/ACM TCBB).

Each subtomogram is brought to a canonical pose computed from its own density, so that
voxels can be compared directly (as k-means features) without alignment:

1. normalise: z-score the volume and flip its sign for dark particles, so that the particle
   is positive on a zero background (``polarity``: ``white`` keeps the sign, ``dark``, the
   ``polarity`` attribute of datasets simulated with the contrast as recorded, negates it);
2. segment: smooth with a Gaussian (``smooth_sigma_voxels``), threshold at
   ``mean + threshold_std · std`` of the smoothed volume (or Otsu's threshold), keep one
   connected component (the heaviest, or the one nearest the box centre);
3. weigh each segmented voxel by how far its smoothed density exceeds the threshold, so that
   voxels at the segmentation boundary, which noise moves in and out, count for almost nothing;
4. centre: shift the centre of mass of these weights to the box centre (voxel n // 2);
5. rotate: the principal axes (eigenvectors of the weighted second moment, by decreasing
   eigenvalue) go to the box axes x, y, z. Each of the first two axes points where the
   weighted third moment along it is positive (the longer tail of the density); the third is
   their cross product, so the pose is a proper rotation (no mirroring of the particle);
6. resample the normalised volume in this pose (``interpolation_order``; outside the box is
   0, the background mean), bin it by ``bin_factor`` and flatten it.

Poses are unstable where the object has (nearly) equal principal moments or (nearly) zero
skewness along an axis; that is a property of the method, not a bug. A volume whose
segmentation is empty or degenerate (pure noise, the empty class, a constant box) is returned
normalised but not moved, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from tomosift.errors import TomosiftError

POLARITIES = ("white", "dark")


@dataclass(frozen=True)
class PosenormSettings:
    """How to pose-normalise.

    Attributes:
        polarity: ``white`` (particles positive) or ``dark`` (particles negative, as recorded
            with the CTF on; the volume is negated first).
        smooth_sigma_voxels: Gaussian σ (voxels) of the smoothing before segmentation.
        threshold: ``std`` (``mean + threshold_std · std`` of the smoothed volume) or ``otsu``
            (Otsu's split of the smoothed volume's histogram; it sits higher than the ``std``
            default for compact particles and can cut a particle into parts at its necks).
        threshold_std: k of the ``std`` threshold.
        component: which connected component (6-connected) is the particle: ``largest``
            (the one with the largest total weight) or ``central`` (the one holding the voxel
            nearest the box centre).
        min_voxels: a segment with fewer voxels counts as empty (no shift, no rotation).
        interpolation_order: spline order of the resampling (1: trilinear).
        bin_factor: features are averaged over bin_factor³ blocks (2: an n³ box gives
            (n // 2)³ features); 1 keeps every voxel. A box not divisible by it loses its last
            n % bin_factor planes on each axis.
    """

    polarity: str = "white"
    smooth_sigma_voxels: float = 1.0
    threshold: Literal["std", "otsu"] = "std"
    threshold_std: float = 1.0
    component: Literal["largest", "central"] = "largest"
    min_voxels: int = 8
    interpolation_order: int = 1
    bin_factor: int = 2

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise TomosiftError(
                f"posenorm polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}"
            )
        if self.threshold not in ("std", "otsu"):
            raise TomosiftError(f"posenorm threshold must be std or otsu, got {self.threshold!r}")
        if self.component not in ("largest", "central"):
            raise TomosiftError(
                f"posenorm component must be largest or central, got {self.component!r}"
            )
        if self.smooth_sigma_voxels < 0:
            raise TomosiftError(
                f"posenorm smooth_sigma_voxels must be >= 0, got {self.smooth_sigma_voxels}"
            )
        if not 0 <= self.interpolation_order <= 5:
            raise TomosiftError(
                f"posenorm interpolation_order must be 0..5, got {self.interpolation_order}"
            )
        if self.bin_factor < 1:
            raise TomosiftError(f"posenorm bin_factor must be >= 1, got {self.bin_factor}")


@dataclass(frozen=True)
class Pose:
    """A canonical pose: resampled volume(u) = volume(centre + rotation.T @ u), in (x, y, z).

    Attributes:
        centre_xyz: centre of mass of the segmented density, in voxels (x, y, z), shape (3,).
        rotation: rows are the principal axes (x, y, z components), shape (3, 3), det +1.
        segmented: whether a particle was found (False: identity pose at the box centre).
    """

    centre_xyz: np.ndarray
    rotation: np.ndarray
    segmented: bool


def _normalised(volume: np.ndarray, settings: PosenormSettings) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float64)
    std = v.std()
    v = (v - v.mean()) / std if std > 0 else np.zeros_like(v)
    return -v if settings.polarity == "dark" else v


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram split maximising the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _segment_weights(v: np.ndarray, settings: PosenormSettings) -> np.ndarray | None:
    """Per-voxel weights (n, n, n) of the particle, or None when nothing usable is found."""
    smooth = ndimage.gaussian_filter(v, settings.smooth_sigma_voxels, mode="constant")
    if settings.threshold == "otsu":
        level = _otsu(smooth.ravel())
    else:
        level = float(smooth.mean() + settings.threshold_std * smooth.std())
    above = smooth > level
    labels, count = ndimage.label(above)
    if count == 0:
        return None
    excess = np.where(above, smooth - level, 0.0)
    if settings.component == "largest":
        mass = ndimage.sum_labels(excess, labels, index=np.arange(1, count + 1))
        chosen = int(np.argmax(mass)) + 1
    else:
        n = v.shape[0]
        # Nearest segmented voxel to the centre; argmin takes the first in C order on ties.
        distance = ndimage.distance_transform_edt(~above, return_indices=True)[1]
        nearest = tuple(int(distance[axis][n // 2, n // 2, n // 2]) for axis in range(3))
        chosen = int(labels[nearest])
    weights = np.where(labels == chosen, excess, 0.0)
    if np.count_nonzero(weights) < settings.min_voxels or weights.sum() <= 0:
        return None
    return weights


def posenorm_pose(volume: np.ndarray, settings: PosenormSettings) -> Pose:
    """The canonical pose of one (n, n, n) [z, y, x] subtomogram (see the module text)."""
    return _pose(_normalised(_check_volume(volume), settings), settings)


def _pose(v: np.ndarray, settings: PosenormSettings) -> Pose:
    n = v.shape[0]
    identity = Pose(np.full(3, float(n // 2)), np.eye(3), segmented=False)
    weights = _segment_weights(v, settings)
    if weights is None:
        return identity
    zyx = np.nonzero(weights)
    w = weights[zyx]
    points = np.stack(zyx[::-1], axis=1).astype(np.float64)  # (P, 3) as (x, y, z)
    w = w / w.sum()
    centre = w @ points
    d = points - centre
    second = (d * w[:, None]).T @ d
    eigenvalues, eigenvectors = np.linalg.eigh(second)
    if not np.all(np.isfinite(eigenvalues)) or eigenvalues[-1] <= 0:
        return identity
    axes = eigenvectors[:, ::-1].T.copy()  # rows: principal axes, decreasing moment
    for i in range(2):
        if w @ (d @ axes[i]) ** 3 < 0:
            axes[i] = -axes[i]
    axes[2] = np.cross(axes[0], axes[1])
    return Pose(centre, axes, segmented=True)


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise TomosiftError(f"posenorm needs a cubic 3D volume, got shape {volume.shape}")
    return volume


def posenorm_volume(volume: np.ndarray, settings: PosenormSettings) -> np.ndarray:
    """Pose-normalise one subtomogram.

    Args:
        volume: (n, n, n) indexed [z, y, x], any polarity (``settings.polarity`` says which).

    Returns:
        (n, n, n) float64: the z-scored, sign-corrected volume resampled so that the particle's
        centre of mass sits at voxel n // 2 and its principal axes lie along x, y, z (largest
        second moment along x). Unmoved when no particle is segmented.
    """
    v = _normalised(_check_volume(volume), settings)
    pose = _pose(v, settings)
    if not pose.segmented:
        return v
    n = v.shape[0]
    # Output index u (z, y, x) samples input at centre + R^T (u - n // 2); in [z, y, x]
    # index order the matrix is R^T with both axes reversed.
    matrix = pose.rotation.T[::-1, ::-1]
    centre_zyx = pose.centre_xyz[::-1]
    offset = centre_zyx - matrix @ np.full(3, float(n // 2))
    return ndimage.affine_transform(v, matrix, offset=offset, order=settings.interpolation_order,
                                    mode="constant", cval=0.0)


def bin_volume(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average over factor³ blocks: (n, n, n) -> (n // factor,)*3 (trailing planes dropped)."""
    if factor == 1:
        return volume
    m = volume.shape[0] // factor
    v = volume[: m * factor, : m * factor, : m * factor]
    return v.reshape(m, factor, m, factor, m, factor).mean(axis=(1, 3, 5))


def posenorm_features(volumes: np.ndarray, settings: PosenormSettings) -> np.ndarray:
    """Pose-normalised, binned, flattened voxels of a batch.

    Args:
        volumes: (B, n, n, n) subtomograms indexed [b, z, y, x] (an h5py dataset also works:
            it is read one volume at a time).

    Returns:
        (B, F) float32 with F = (n // bin_factor)³.
    """
    if len(volumes.shape) != 4:
        raise TomosiftError(f"posenorm needs a batch of shape (B, n, n, n), got {volumes.shape}")
    n = volumes.shape[1]
    m = n // settings.bin_factor
    if m < 1:
        raise TomosiftError(f"posenorm bin_factor {settings.bin_factor} exceeds the box ({n})")
    out = np.empty((volumes.shape[0], m**3), dtype=np.float32)
    for i in range(volumes.shape[0]):
        normalised = posenorm_volume(np.asarray(volumes[i]), settings)
        out[i] = bin_volume(normalised, settings.bin_factor).ravel()
    return out
