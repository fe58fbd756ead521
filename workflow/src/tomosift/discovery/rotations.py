"""Rigid transforms of volumes and RELION's Euler angles.

Conventions (those of the simulator): volumes are indexed [z, y, x] with the origin at voxel
n // 2 on every axis; rotations are (3, 3) matrices acting on (x, y, z) column vectors and
shifts are (3,) (x, y, z) in voxels. Transforming a volume by the pose (R, t) means

    v'(x) = v(R^T (x - t)),   x measured from the centre,

i.e. rotate about the centre, then shift by t; in Fourier space F'(q) = exp(-2 pi i q.t / n)
F(R^T q).

RELION (``Euler_angles2matrix(rot, tilt, psi)``) gives the matrix A of a particle's pose; the
particle is the reference transformed by A and shifted by its origin offset (rlnOriginX/Y/Z,
converted to voxels): particle = transform(reference, A, origin). An alignment (R, s) as
:func:`tomosift.discovery.align.align` returns it maps the particle onto the reference,
transform(particle, R, s) ≈ reference, so A = R^T and origin = -R^T s (:func:`relion_pose`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tomosift.errors import TomosiftError

# Below this |sin(tilt)| the rot and psi angles are not separable (gimbal lock).
_GIMBAL_SIN = 1e-6


def _check_rotation(rotation: np.ndarray) -> np.ndarray:
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3):
        raise TomosiftError(f"rotation must be a (3, 3) matrix, got shape {rotation.shape}")
    return rotation


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise TomosiftError(f"expected a cubic (n, n, n) volume, got shape {volume.shape}")
    return volume


def transform_volume(
    volume: np.ndarray,
    rotation: np.ndarray,
    shift_voxels: np.ndarray | None = None,
    order: int = 1,
    fill: str = "zero",
) -> np.ndarray:
    """Rotate a volume about its centre n // 2, then shift it: v'(x) = v(R^T (x - t)).

    Args:
        volume: (n, n, n) indexed [z, y, x].
        rotation: (3, 3) R acting on (x, y, z).
        shift_voxels: (3,) t in (x, y, z) voxels; None = no shift.
        order: spline order of the interpolation (1 = trilinear).
        fill: value outside the input box: ``zero`` or ``mean`` (the volume's mean).

    Returns:
        (n, n, n) float32 transformed volume.
    """
    volume = _check_volume(volume)
    rotation = _check_rotation(rotation)
    shift = np.zeros(3) if shift_voxels is None else np.asarray(shift_voxels, dtype=np.float64)
    if fill not in ("zero", "mean"):
        raise TomosiftError(f"fill must be 'zero' or 'mean', got {fill!r}")
    n = volume.shape[0]
    centre = np.full(3, n // 2, dtype=np.float64)
    # In [z, y, x] index space the map input = R^T (output - c - t) + c reads with both axes
    # of R^T reversed.
    matrix = rotation.T[::-1, ::-1]
    offset = centre - matrix @ (centre + shift[::-1])
    cval = float(volume.mean()) if fill == "mean" else 0.0
    out = ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32), matrix, offset, order=order, mode="constant",
        cval=cval, prefilter=order > 1,
    )
    return out.astype(np.float32, copy=False)


def fourier_shift_phase(box: int, shift_voxels: np.ndarray) -> np.ndarray:
    """(n, n, n // 2 + 1) complex128 factor exp(-2 pi i k.t / n) that shifts an rfftn by t."""
    shift = np.asarray(shift_voxels, dtype=np.float64)
    full = np.fft.fftfreq(box)
    half = np.fft.rfftfreq(box)
    phase = (
        shift[2] * full[:, None, None] + shift[1] * full[None, :, None]
        + shift[0] * half[None, None, :]
    )
    return np.exp(-2j * np.pi * phase)


def shift_volume_fourier(volume: np.ndarray, shift_voxels: np.ndarray) -> np.ndarray:
    """Exact (periodic, band-limited) shift of an (n, n, n) volume by t (x, y, z) voxels."""
    volume = _check_volume(volume)
    n = volume.shape[0]
    spectrum = np.fft.rfftn(volume, axes=(0, 1, 2)) * fourier_shift_phase(n, shift_voxels)
    return np.fft.irfftn(spectrum, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def rotation_angle_deg(first: np.ndarray, second: np.ndarray) -> float:
    """Geodesic angle (degrees, 0..180) between two rotations: the angle of first^T second."""
    relative = _check_rotation(first).T @ _check_rotation(second)
    cosine = np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cosine)))


def relion_matrix(rot_deg: float, tilt_deg: float, psi_deg: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix``: the (3, 3) matrix A of Euler angles in degrees."""
    alpha, beta, gamma = np.deg2rad([rot_deg, tilt_deg, psi_deg])
    ca, sa = np.cos(alpha), np.sin(alpha)
    cb, sb = np.cos(beta), np.sin(beta)
    cg, sg = np.cos(gamma), np.sin(gamma)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


def relion_angles(matrix: np.ndarray) -> tuple[float, float, float]:
    """Euler angles (rot, tilt, psi) in degrees of a RELION matrix; inverse of relion_matrix.

    tilt is in [0, 180]; rot and psi in (-180, 180]. At gimbal lock (tilt 0 or 180) only
    rot + psi (or rot - psi) is defined: rot is set to 0 and psi carries the angle.
    """
    a = _check_rotation(matrix)
    sin_tilt = np.hypot(a[0, 2], a[1, 2])
    if sin_tilt > _GIMBAL_SIN:
        psi = np.arctan2(a[1, 2], -a[0, 2])
        rot = np.arctan2(a[2, 1], a[2, 0])
        tilt = np.arctan2(sin_tilt, a[2, 2])
    elif a[2, 2] > 0:  # tilt = 0: A is a rotation by rot + psi about z
        rot, tilt, psi = 0.0, 0.0, np.arctan2(a[0, 1], a[0, 0])
    else:  # tilt = 180
        rot, tilt, psi = 0.0, np.pi, np.arctan2(a[0, 1], -a[0, 0])
    return tuple(float(np.rad2deg(angle)) for angle in (rot, tilt, psi))


def relion_pose(
    alignment_rotation: np.ndarray, alignment_shift_voxels: np.ndarray
) -> tuple[float, float, float, np.ndarray]:
    """RELION's reference-to-particle pose of an alignment that maps a particle onto the
    reference (transform(particle, R, s) ≈ reference).

    Returns:
        (rot, tilt, psi) in degrees and the origin (3,) (x, y, z) in voxels such that
        particle ≈ transform(reference, relion_matrix(rot, tilt, psi), origin);
        A = R^T, origin = -R^T s. Multiply the origin by the voxel size (Å) for
        rlnOriginX/Y/ZAngst.
    """
    rotation = _check_rotation(alignment_rotation)
    shift = np.asarray(alignment_shift_voxels, dtype=np.float64)
    if shift.shape != (3,):
        raise TomosiftError(f"shift must be a (3,) vector, got shape {shift.shape}")
    rot, tilt, psi = relion_angles(rotation.T)
    return rot, tilt, psi, -rotation.T @ shift


def axis_angle_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """(3, 3) rotation by ``angle_rad`` about the unit vector ``axis`` (x, y, z), Rodrigues."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def local_rotations(centre: np.ndarray, step_deg: float, rings: int = 2,
                    directions: int = 12) -> np.ndarray:
    """Rotations near ``centre``: centre itself, then ``centre`` composed with rotations by
    ``step_deg``, 2 ``step_deg`` .. ``rings`` ``step_deg`` about ``directions`` axes spread
    evenly over the sphere (Fibonacci lattice; the axes and their opposites, so each ring
    covers both senses). Returns (1 + 2 rings directions, 3, 3): R = centre @ dR."""
    centre = _check_rotation(centre)
    index = np.arange(directions) + 0.5
    polar = np.arccos(1.0 - index / directions)  # the upper hemisphere: -axis is the same
    azimuth = np.pi * (1.0 + 5.0**0.5) * index
    axes = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth),
                     np.cos(polar)], axis=1)
    out = [centre]
    for ring in range(1, rings + 1):
        angle = np.deg2rad(ring * step_deg)
        for axis in axes:
            out.append(centre @ axis_angle_matrix(axis, angle))
            out.append(centre @ axis_angle_matrix(axis, -angle))
    return np.stack(out)
