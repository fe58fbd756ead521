"""Wedge-weighted subtomogram averaging in Fourier space.

Each member is brought into the common frame by its pose (the :func:`~tomosift.discovery.align.
align` sense: transform(member, R, s) lies on the reference), and its wedge mask is rotated
with it (exactly, from the tilt range, by :func:`~tomosift.discovery.wedge.wedge_mask`, or by
nearest-neighbour lookup for a given mask). The average is

    A(k) = sum_i M_i^R(k) F_i'(k) / sum_i M_i^R(k)   where sum_i M_i^R(k) > mask_threshold,

and 0 elsewhere, with F_i' the transform of the transformed member and M_i^R its rotated 0/1
mask: every coefficient is the mean over the members that observed it, so members in different
orientations fill each other's missing wedges. Members are accumulated one at a time (any
iterable), so memory does not grow with their number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.fft

from tomosift.discovery.align import rotate_mask
from tomosift.discovery.rotations import transform_volume
from tomosift.discovery.wedge import check_tilt_range, wedge_mask
from tomosift.errors import TomosiftError


def average(
    volumes: Iterable[np.ndarray],
    rotations: Sequence[np.ndarray] | np.ndarray,
    shifts: Sequence[np.ndarray] | np.ndarray,
    masks: np.ndarray | Iterable[np.ndarray] | None = None,
    *,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    mask_threshold: float = 0.5,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Average subtomograms in a common frame, each Fourier coefficient over the members that
    observed it.

    Args:
        volumes: the members, each (n, n, n) indexed [z, y, x]; any iterable (streamed).
        rotations: (N, 3, 3) per member R, acting on (x, y, z).
        shifts: (N, 3) per member s, (x, y, z) voxels; member i is used as
            transform(volume_i, R_i, s_i).
        masks: the members' own rfftn-layout 0/1 wedge masks (n, n, n // 2 + 1), in their own
            frames: one array shared by all, or an iterable of one per member (rotated by
            nearest-neighbour lookup); None = the wedge of ``tilt_min_deg .. tilt_max_deg`` for
            every member (rotated exactly).
        tilt_min_deg, tilt_max_deg: the tilt range when ``masks`` is None (degrees).
        mask_threshold: absolute threshold on the summed mask, i.e. on the number of members
            that observed a coefficient (masks are 0/1): coefficients with a sum <= the
            threshold are set to 0. The default 0.5 keeps every coefficient one member observed;
            pass ``fraction * N`` for a relative threshold.
        order: spline order of the real-space interpolation (1 = trilinear).

    Returns:
        (average (n, n, n) float32, summed mask (n, n, n // 2 + 1) float32).
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise TomosiftError(f"rotations must be (N, 3, 3), got shape {rotations.shape}")
    if shifts.shape != (len(rotations), 3):
        raise TomosiftError(f"shifts must be (N, 3) = ({len(rotations)}, 3), got {shifts.shape}")
    if masks is None:
        check_tilt_range(tilt_min_deg, tilt_max_deg)
    shared_mask = masks if isinstance(masks, np.ndarray) else None
    mask_iter = iter(masks) if masks is not None and shared_mask is None else None

    total: np.ndarray | None = None
    summed: np.ndarray | None = None
    count = 0
    for volume in volumes:
        volume = np.asarray(volume, dtype=np.float32)
        box = volume.shape[0]
        if volume.shape != (box, box, box):
            raise TomosiftError(f"member {count}: expected a cubic volume, got {volume.shape}")
        if count >= len(rotations):
            raise TomosiftError(f"more volumes than the {len(rotations)} poses")
        if total is None:
            total = np.zeros((box, box, box // 2 + 1), dtype=np.complex128)
            summed = np.zeros(total.shape, dtype=np.float64)
        elif volume.shape[0] != total.shape[0]:
            raise TomosiftError(f"member {count}: box {box} differs from the first member's "
                                f"{total.shape[0]}")
        rotation, shift = rotations[count], shifts[count]
        if masks is None:
            mask = wedge_mask(box, tilt_min_deg, tilt_max_deg, rotation=rotation)
        else:
            own = shared_mask if shared_mask is not None else next(mask_iter, None)
            if own is None:
                raise TomosiftError(f"fewer masks than volumes (none for member {count})")
            own = np.asarray(own, dtype=np.float32)
            if own.shape != total.shape:
                raise TomosiftError(f"member {count}: mask shape {own.shape}, expected "
                                    f"{total.shape}")
            mask = rotate_mask(own, rotation)
        moved = transform_volume(volume, rotation, shift, order=order)
        total += scipy.fft.rfftn(moved) * mask
        summed += mask
        count += 1
    if total is None or summed is None:
        raise TomosiftError("no volumes to average")
    if count != len(rotations):
        raise TomosiftError(f"{count} volumes but {len(rotations)} poses")
    box = total.shape[0]
    kept = summed > mask_threshold
    spectrum = np.where(kept, total / np.where(kept, summed, 1.0), 0.0)
    averaged = scipy.fft.irfftn(spectrum, s=(box, box, box))
    return averaged.astype(np.float32), summed.astype(np.float32)
