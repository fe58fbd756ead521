"""A straightforward real-space simulator: rotate, project, filter, add noise, back-project.

This is the textbook pipeline, kept as a reference: tests check the Fourier-space simulator
(:mod:`tomosift.simulate.tomography`) against it, and ``benchmarks/simulate.py`` measures how
much faster the Fourier version is. Each tilt costs a full 3D interpolation of the volume for
the projection and another for the back-projection.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tomosift.simulate.ctf import detector_transfer
from tomosift.simulate.tomography import SimulationSettings, rotation_about_y


def rotate_volume(
    volume: np.ndarray, rotation: np.ndarray, shift_voxels: np.ndarray, order: int = 3
) -> np.ndarray:
    """``f(R^T (x - t))`` on the same grid (origin at voxel n // 2), by spline interpolation.

    Args:
        volume: (n, n, n) indexed [z, y, x].
        rotation: (3, 3) R acting on (x, y, z).
        shift_voxels: (3,) t (x, y, z).
        order: spline order (1 = trilinear, 3 = cubic).
    """
    n = volume.shape[0]
    centre = n // 2
    axis = np.arange(n) - centre
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    target = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3) - np.asarray(shift_voxels)
    source = target @ rotation  # rows: R^T (x - t)
    coords = [source[:, 2] + centre, source[:, 1] + centre, source[:, 0] + centre]
    out = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)
    return out.reshape(volume.shape)


def project_tilt_series(volume: np.ndarray, angles_deg: np.ndarray, order: int = 1) -> np.ndarray:
    """Projections (T, n, n) [y, x] along z of the specimen tilted by each angle about y."""
    return np.stack([
        rotate_volume(volume, rotation_about_y(np.deg2rad(a)), np.zeros(3), order).sum(axis=0)
        for a in angles_deg
    ])


def filter_projections(projections: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Multiply each projection's 2D transform by ``transfer`` (n, n//2+1), rfft2 layout."""
    return np.fft.irfft2(np.fft.rfft2(projections) * transfer, s=projections.shape[-2:])


def detector_transfer_grid(settings: SimulationSettings) -> np.ndarray:
    """CTF x MTF on the rfft2 grid (n, n // 2 + 1) of an n x n projection."""
    n = settings.box_voxels
    v = np.fft.fftfreq(n, 1.0 / n)[:, None]
    u = np.fft.rfftfreq(n, 1.0 / n)[None, :]
    ctf_values, mtf_values = detector_transfer(u, v, n, settings.voxel_size_nm, settings.optics)
    return ctf_values * mtf_values


def weighted_back_projection(
    projections: np.ndarray, angles_deg: np.ndarray, order: int = 1
) -> np.ndarray:
    """Ramp-filter each projection along x (perpendicular to the tilt axis), smear along z,
    rotate back and sum: the (n, n, n) reconstruction."""
    n = projections.shape[-1]
    ramp = np.abs(np.fft.rfftfreq(n, 1.0 / n))[None, :]
    ramp[0, 0] = 0.25
    filtered = np.fft.irfft2(np.fft.rfft2(projections) * ramp, s=(n, n))
    volume = np.zeros((n, n, n))
    for image, angle in zip(filtered, angles_deg, strict=True):
        smeared = np.broadcast_to(image, (n, n, n))
        volume += rotate_volume(smeared, rotation_about_y(np.deg2rad(angle)).T, np.zeros(3), order)
    return volume * (np.pi / (len(angles_deg) * n))


def simulate_particle_realspace(
    volume: np.ndarray,
    rotation: np.ndarray,
    shift_voxels: np.ndarray,
    settings: SimulationSettings,
    noise_sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The whole straightforward pipeline for one particle (noise before CTF, as the paper)."""
    angles = settings.tilt_angles_deg
    placed = rotate_volume(volume, rotation, shift_voxels, order=3)
    projections = project_tilt_series(placed, angles)
    projections = projections + noise_sigma * rng.standard_normal(projections.shape)
    projections = filter_projections(projections, detector_transfer_grid(settings))
    return weighted_back_projection(projections, angles).astype(np.float32)
