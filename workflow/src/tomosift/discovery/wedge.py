"""Missing-wedge masks: which Fourier coefficients of a subtomogram its tilt series observed.

Geometry (the simulator's, :mod:`tomosift.simulate.tomography`): the tilt axis is y and the
beam z. At tilt angle theta the specimen is rotated by R_y(theta) (``rotation_about_y``), so the
projection observes the specimen-frame central plane R_y(theta)^T (u, v, 0): the plane spanned
by y and (cos theta, 0, sin theta), with normal (-sin theta, 0, cos theta). A frequency
k = (kx, ky, kz) lies on the plane of the angle

    theta(k) = atan(kz / kx), wrapped into (-90°, 90°],

and is observed iff ``tilt_min <= theta(k) <= tilt_max``. Frequencies on the tilt axis
(kx = kz = 0) lie on every plane and are always observed. For ``tilt_min = -tilt_max`` this is
the double wedge ``|kz| <= tan(tilt_max) |kx|`` of the simulator's ``wedge`` reconstruction;
the sign matters only for asymmetric ranges (it is the simulator's ``_SliceGrid`` sign: the
tilt +theta observes (cos theta, 0, sin theta)).

Masks are also restricted to the Nyquist sphere ``|k| <= n / 2`` (Fourier-index units): the
corners of the cube beyond it are not observed isotropically and are left out, as the
simulator leaves them out.
"""

from __future__ import annotations

import numpy as np

from tomosift.errors import TomosiftError

# Tolerance (degrees, index units) for points on the wedge's boundary planes and on the axis.
_ANGLE_TOLERANCE_DEG = 1e-7
_AXIS_TOLERANCE = 1e-9


def check_tilt_range(tilt_min_deg: float, tilt_max_deg: float) -> None:
    """Raise TomosiftError unless -90 <= tilt_min < tilt_max <= 90 (degrees)."""
    if not (-90.0 <= tilt_min_deg <= 90.0 and -90.0 <= tilt_max_deg <= 90.0):
        raise TomosiftError(
            f"tilt angles must lie in [-90, 90] degrees, got [{tilt_min_deg}, {tilt_max_deg}]"
        )
    if not tilt_min_deg < tilt_max_deg:
        raise TomosiftError(
            f"tilt_min_deg must be < tilt_max_deg, got {tilt_min_deg} >= {tilt_max_deg}"
        )


def fourier_frequencies(box: int, half: bool = True) -> np.ndarray:
    """Frequencies of an unshifted FFT grid, in Fourier-index units (cycles per box).

    Returns:
        (n, n, n // 2 + 1, 3) for rfftn layout (half=True) or (n, n, n, 3), float64, the last
        axis (kx, ky, kz); the grid is indexed [kz, ky, kx].
    """
    full = np.fft.fftfreq(box, 1.0 / box)
    kx = np.fft.rfftfreq(box, 1.0 / box) if half else full
    kz, ky, kx = np.meshgrid(full, full, kx, indexing="ij")
    return np.stack([kx, ky, kz], axis=-1)


def observed(frequencies: np.ndarray, tilt_min_deg: float, tilt_max_deg: float) -> np.ndarray:
    """Whether a tilt series over [tilt_min, tilt_max] observes frequencies (..., 3) (x, y, z).

    No Nyquist restriction here. Returns a bool array of shape frequencies.shape[:-1].
    """
    kx, kz = frequencies[..., 0], frequencies[..., 2]
    on_axis = np.hypot(kx, kz) <= _AXIS_TOLERANCE
    if tilt_min_deg <= -90.0 and tilt_max_deg >= 90.0:
        return np.ones(kx.shape, dtype=bool)
    # theta = atan(kz / kx) in (-90, 90]; atan2 on the half-plane kx >= 0 avoids the division.
    sign = np.where(kx < 0, -1.0, 1.0)
    theta = np.rad2deg(np.arctan2(sign * kz, sign * kx))
    theta = np.where(theta <= -90.0 + _ANGLE_TOLERANCE_DEG, 90.0, theta)
    inside = (theta >= tilt_min_deg - _ANGLE_TOLERANCE_DEG) & (
        theta <= tilt_max_deg + _ANGLE_TOLERANCE_DEG
    )
    if tilt_min_deg <= -90.0:  # -90 and +90 are the same plane
        inside |= theta >= 90.0 - _ANGLE_TOLERANCE_DEG
    return inside | on_axis


def wedge_mask(
    box: int,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    rotation: np.ndarray | None = None,
    half: bool = True,
) -> np.ndarray:
    """0/1 mask of the Fourier coefficients a tilt series observed, unshifted FFT layout.

    Args:
        box: box size n (voxels).
        tilt_min_deg, tilt_max_deg: tilt range in degrees, -90 <= min < max <= 90;
            (-90, 90) means no missing wedge.
        rotation: (3, 3) rotation R (acting on x, y, z) the volume was transformed by; the mask
            of the transformed volume is ``mask(R^T k)``, evaluated exactly at the rotated
            frequencies. None = the identity.
        half: rfftn layout (n, n, n // 2 + 1) if True, else the full (n, n, n) layout.

    Returns:
        float32 mask, 1 where observed and inside the Nyquist sphere ``|k| <= n / 2``.
    """
    if box < 2:
        raise TomosiftError(f"box must be >= 2 voxels, got {box}")
    check_tilt_range(tilt_min_deg, tilt_max_deg)
    k = fourier_frequencies(box, half)
    inside_sphere = np.einsum("...i,...i->...", k, k) <= (box / 2) ** 2 + 1e-9
    if rotation is not None:
        rotation = np.asarray(rotation, dtype=np.float64)
        if rotation.shape != (3, 3):
            raise TomosiftError(f"rotation must be a (3, 3) matrix, got shape {rotation.shape}")
        k = k @ rotation  # rows: (R^T k)^T = k^T R
    return (observed(k, tilt_min_deg, tilt_max_deg) & inside_sphere).astype(np.float32)


def apply_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Volume (n, n, n) with its rfftn multiplied by an rfftn-layout mask; float32."""
    n = volume.shape[0]
    spectrum = np.fft.rfftn(volume, axes=(0, 1, 2)) * mask
    return np.fft.irfftn(spectrum, s=(n, n, n), axes=(0, 1, 2)).astype(np.float32)
