"""Tilt-series simulation and subtomogram reconstruction, in Fourier space.

For each particle (paper Section 3.1.1): the density map is rotated and shifted, projected
over a single-axis tilt series about y, each projection gets Gaussian noise, the CTF and the
detector MTF, and the subtomogram is reconstructed by direct Fourier inversion.

How it is computed (and why it is fast): by the projection-slice theorem the 2D Fourier
transform of the projection at tilt theta is the central slice of the particle's 3D transform
at the specimen-frame frequencies ``q = R_theta^T (u, v, 0)``. The slice frequencies, the
CTF/MTF values and the insertion of slices into the output grid depend only on the tilt scheme,
so they are computed once (:class:`TiltSeriesGeometry`). Per particle only two things remain:

1. sample the class's (padded, precomputed) 3D transform at the rotated slice frequencies
   ``R_p^T q`` by trilinear interpolation and apply the shift as a phase ramp;
2. insert the filtered slices (plus noise) into the output grid with trilinear gridding
   weights, divide by the accumulated weights (as EMAN2's Fourier reconstructor does), and
   inverse-FFT.

Frequencies are in voxel units; the output grid is numpy's ``rfftn`` layout of an (n, n, n)
volume indexed [z, y, x]; the real-space origin is voxel n // 2. A particle pose (R, t) places
the map as ``f_p(x) = f(R^T (x - t))``: rotated by R about the origin, then shifted by t voxels.

Reconstruction modes:

* ``fourier`` (default): direct Fourier inversion with gridding weights and weight
  normalisation.
* ``wbp``: weighted back-projection, done in Fourier space (back-projection is the adjoint of
  slice extraction): slices are weighted by the ramp |u| * dtheta and summed without weight
  normalisation.
* ``wedge``: an *approximation*, never the default: the particle's 3D transform is multiplied by
  CTF x MTF x missing-wedge mask and filtered white noise is added in 3D. No tilt sampling,
  no gridding; use it for quick experiments only.

Noise and the SNR contract: SNR = var(signal) / var(noise) of the reconstructed subtomogram
over the whole box, where signal is the same reconstruction without noise. The per-projection
noise standard deviation is set per particle to ``sqrt(var(signal) / (SNR * g))``, where g is
the variance that unit projection noise has after filtering and reconstruction (calibrated once
per geometry). Noise is added to the projections before the CTF and MTF by default, as the
paper describes (``noise_stage='before_ctf'``); ``after_ctf`` filters it by the MTF only.

Output: float32, no normalisation, polarity as recorded (particles dark with the CTF on; see
:mod:`tomosift.simulate.ctf`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sparse

from tomosift.errors import TomosiftError
from tomosift.grids import trilinear_corners
from tomosift.simulate.ctf import Optics, detector_transfer

RECONSTRUCTION_MODES = ("fourier", "wbp", "wedge")
NOISE_STAGES = ("before_ctf", "after_ctf")
CALIBRATION_REALISATIONS = 16
# Output voxels whose summed gridding weight is below this are left empty (the missing wedge).
MIN_GRIDDING_WEIGHT = 0.5


@dataclass(frozen=True)
class SimulationSettings:
    """Everything that defines the imaging of one dataset (defaults: the paper's)."""

    box_voxels: int = 40
    voxel_size_nm: float = 0.92
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 2.0
    optics: Optics = field(default_factory=Optics)
    reconstruction: str = "fourier"
    noise_stage: str = "before_ctf"
    pad_factor: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.tilt_max_deg <= 90:
            raise TomosiftError(f"tilt_max_deg must be in (0, 90], got {self.tilt_max_deg}")
        if self.tilt_step_deg <= 0:
            raise TomosiftError(f"tilt_step_deg must be > 0, got {self.tilt_step_deg}")
        if self.reconstruction not in RECONSTRUCTION_MODES:
            raise TomosiftError(f"reconstruction must be one of {RECONSTRUCTION_MODES}")
        if self.noise_stage not in NOISE_STAGES:
            raise TomosiftError(f"noise_stage must be one of {NOISE_STAGES}")
        if self.box_voxels < 8 or self.box_voxels % 2:
            raise TomosiftError(f"box_voxels must be even and >= 8, got {self.box_voxels}")

    @classmethod
    def from_config(cls, imaging: dict, tilt_max_deg: float) -> SimulationSettings:
        """Settings from the workflow's imaging parameters (see ``imaging_params`` in
        ``workflow/rules/common.smk``) and one tilt range."""
        ctf, mtf = imaging["ctf"], imaging["mtf"]
        optics = Optics(
            voltage_kv=ctf["voltage_kv"], cs_mm=ctf["cs_mm"], defocus_um=ctf["defocus_um"],
            amplitude_contrast=ctf["amplitude_contrast"], ctf_enabled=ctf["enabled"],
            mtf_enabled=mtf["enabled"],
        )
        return cls(
            box_voxels=imaging["box_voxels"], voxel_size_nm=imaging["voxel_size_nm"],
            tilt_max_deg=float(tilt_max_deg), tilt_step_deg=imaging["tilt_step_deg"],
            optics=optics, reconstruction=imaging["reconstruction"],
            noise_stage=imaging["noise_stage"], pad_factor=imaging["pad_factor"],
        )

    @property
    def tilt_angles_deg(self) -> np.ndarray:
        """Tilt angles from -theta to +theta in steps of tilt_step_deg."""
        return np.arange(-self.tilt_max_deg, self.tilt_max_deg + 1e-9, self.tilt_step_deg)


def rotation_about_y(angle_rad: float) -> np.ndarray:
    """(3, 3) rotation matrix about the y axis, acting on (x, y, z) column vectors."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def padded_spectrum(volume: np.ndarray, pad_factor: int = 2) -> np.ndarray:
    """3D transform of a density map, prepared for trilinear sampling at arbitrary frequencies.

    The map is zero-padded to ``pad_factor`` times its size (finer frequency sampling) and
    divided by the real-space apodisation of trilinear interpolation (sinc² per axis), so that
    interpolating this spectrum approximates the exact transform closely.

    Args:
        volume: (n, n, n) map, origin at voxel n // 2.
        pad_factor: padding factor P / n.

    Returns:
        (P, P, P) complex64 spectrum with the origin at index 0 (unshifted FFT layout).
    """
    n = volume.shape[0]
    if volume.shape != (n, n, n):
        raise TomosiftError(f"expected a cubic volume, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise TomosiftError("the density map contains NaN or infinite values")
    size = n * pad_factor
    padded = np.zeros((size, size, size), dtype=np.float64)
    low = size // 2 - n // 2
    padded[low : low + n, low : low + n, low : low + n] = volume
    apod = np.sinc((np.arange(size) - size // 2) / size) ** 2
    padded /= apod[:, None, None] * apod[None, :, None] * apod[None, None, :]
    return np.fft.fftn(np.fft.ifftshift(padded)).astype(np.complex64)


def sample_spectrum(spectrum: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of an unshifted periodic spectrum at (M, 3) x, y, z points.

    Args:
        spectrum: (P, P, P) complex array indexed [z, y, x].
        points: (M, 3) frequencies in spectrum-grid units (x, y, z), any sign.

    Returns:
        (M,) complex64 values.
    """
    # The per-particle hot path: wrapped indices and float32 weights are formed once per axis
    # instead of per corner (grids.trilinear_corners is 1.6x slower here).
    size = spectrum.shape[0]
    base = np.floor(points)
    frac = (points - base).astype(np.float32)
    base = base.astype(np.int64) % size
    upper = (base + 1) % size
    flat = spectrum.reshape(-1)
    out = np.zeros(len(points), dtype=np.complex64)
    for iz, wz in ((base[:, 2], 1 - frac[:, 2]), (upper[:, 2], frac[:, 2])):
        for iy, wy in ((base[:, 1], 1 - frac[:, 1]), (upper[:, 1], frac[:, 1])):
            row = (iz * size + iy) * size
            wzy = wz * wy
            out += (wzy * (1 - frac[:, 0])) * flat[row + base[:, 0]]
            out += (wzy * frac[:, 0]) * flat[row + upper[:, 0]]
    return out


class TiltSeriesGeometry:
    """Everything about a tilt scheme that is the same for every particle.

    Slice samples are laid out as (T, n, n // 2 + 2) = (tilt, v, u) with u = -1 .. n/2 and
    v in numpy ``fftfreq`` order: the half-plane u >= 0 of each projection's 2D transform plus
    the column u = -1 (the conjugate of u = 1), whose samples complete the x = 0 plane of the
    half-space output grid.
    """

    def __init__(self, settings: SimulationSettings):
        self.settings = settings
        n = settings.box_voxels
        self.box_voxels = n
        self.angles_deg = settings.tilt_angles_deg
        u_values = np.arange(-1, n // 2 + 1)
        v_values = np.fft.fftfreq(n, 1.0 / n)
        v_grid, u_grid = np.meshgrid(v_values, u_values, indexing="ij")  # (n, n//2+2)
        self.u_index = np.broadcast_to(u_grid, (len(self.angles_deg), *u_grid.shape)).ravel()
        self.v_index = np.broadcast_to(v_grid, (len(self.angles_deg), *v_grid.shape)).ravel()
        detector = np.stack([u_grid.ravel(), v_grid.ravel(), np.zeros(u_grid.size)], axis=1)
        # Specimen-frame frequency of detector frequency (u, v) at tilt theta: R_theta^T (u,v,0).
        slices = [detector @ rotation_about_y(np.deg2rad(a)) for a in self.angles_deg]
        self.slice_points = np.concatenate(slices).astype(np.float64)  # (M, 3) voxel units
        self.slice_shape = (len(self.angles_deg), n, n // 2 + 2)
        ctf_values, mtf_values = detector_transfer(
            self.u_index, self.v_index, n, settings.voxel_size_nm, settings.optics
        )
        self.signal_filter = (ctf_values * mtf_values).astype(np.float32)
        if settings.noise_stage == "before_ctf":
            self.noise_filter = self.signal_filter
        else:
            self.noise_filter = mtf_values.astype(np.float32)
        self.insertion = _insertion_matrix(self.slice_points, n)
        weights = np.asarray(self.insertion @ np.ones(self.insertion.shape[1], np.float32))
        self.gridding_weight = weights.reshape(n, n, n // 2 + 1)
        if settings.reconstruction == "wbp":
            step_rad = np.deg2rad(settings.tilt_step_deg)
            ramp = np.abs(self.u_index) * step_rad
            ramp[self.u_index == 0] = 1.0 / len(self.angles_deg)
            self.sample_weight = ramp.astype(np.float32)
            self.output_scale = np.ones_like(self.gridding_weight, dtype=np.float32)
        else:
            self.sample_weight = np.ones(len(self.u_index), dtype=np.float32)
            sampled = self.gridding_weight >= MIN_GRIDDING_WEIGHT
            self.output_scale = np.where(sampled, 1.0 / np.maximum(self.gridding_weight, 1e-12), 0)
            self.output_scale = self.output_scale.astype(np.float32)
        self._wedge_transfer: tuple[np.ndarray, np.ndarray] | None = None
        self.noise_gain = self._calibrate_noise_gain()

    @property
    def n_samples(self) -> int:
        return len(self.u_index)

    # -- the three steps of a particle ---------------------------------------------------

    def signal_slices(
        self, spectrum: np.ndarray, rotation: np.ndarray, shift_voxels: np.ndarray
    ) -> np.ndarray:
        """Noise-free slice samples (M,) of a particle: rotated, shifted, before filtering.

        Args:
            spectrum: the class's :func:`padded_spectrum`.
            rotation: (3, 3) rotation R of the pose.
            shift_voxels: (3,) shift t (x, y, z) in voxels.
        """
        n = self.box_voxels
        scale = spectrum.shape[0] / n
        # F_p(q) = exp(-2 pi i q.t) F(R^T q); with q as row vectors R^T q is q @ R.
        values = sample_spectrum(spectrum, (self.slice_points @ rotation) * scale)
        phase = (self.slice_points @ np.asarray(shift_voxels, dtype=np.float64)) * (-2 * np.pi / n)
        return values * np.exp(1j * phase).astype(np.complex64)

    def noise_slices(self, rng: np.random.Generator) -> np.ndarray:
        """Transforms (M,) of unit-variance white noise projections, one per tilt."""
        n = self.box_voxels
        tilts = len(self.angles_deg)
        noise = rng.standard_normal((tilts, n, n), dtype=np.float32)
        spectrum = np.fft.rfft2(noise)  # (T, v, u = 0 .. n/2)
        minus_v = (-np.arange(n)) % n
        column_u_minus_1 = np.conj(spectrum[:, minus_v, 1:2])
        return np.concatenate([column_u_minus_1, spectrum], axis=2).astype(np.complex64).ravel()

    def reconstruct(self, *slice_sets: np.ndarray) -> list[np.ndarray]:
        """Insert filtered slice sets (each (M,) complex) and return the (n, n, n) volumes.

        The sets are inserted as-is: multiply by ``signal_filter``/``noise_filter`` first.
        """
        n = self.box_voxels
        columns = []
        for values in slice_sets:
            weighted = values * self.sample_weight
            columns += [weighted.real, weighted.imag]
        inserted = self.insertion @ np.stack(columns, axis=1)
        volumes = []
        for i in range(len(slice_sets)):
            grid = (inserted[:, 2 * i] + 1j * inserted[:, 2 * i + 1]).reshape(n, n, n // 2 + 1)
            grid *= self.output_scale
            volume = np.fft.irfftn(grid, s=(n, n, n), axes=(0, 1, 2))
            volumes.append(np.fft.fftshift(volume).astype(np.float32))
        return volumes

    # -- whole particles ------------------------------------------------------------------

    def clean_particle(
        self, spectrum: np.ndarray, rotation: np.ndarray, shift_voxels: np.ndarray
    ) -> np.ndarray:
        """Noise-free reconstruction (n, n, n) of a particle."""
        if self.settings.reconstruction == "wedge":
            return self._wedge_volumes(spectrum, rotation, shift_voxels, None)[0]
        signal = self.signal_slices(spectrum, rotation, shift_voxels) * self.signal_filter
        return self.reconstruct(signal)[0]

    def particle(
        self,
        spectrum: np.ndarray | None,
        rotation: np.ndarray,
        shift_voxels: np.ndarray,
        snr: float,
        noise_rng: np.random.Generator,
        empty_noise_sigma: float | None = None,
    ) -> tuple[np.ndarray, float, float]:
        """Simulate one subtomogram.

        Args:
            spectrum: the class's padded spectrum, or None for an empty subtomogram.
            rotation, shift_voxels: the pose (see :meth:`signal_slices`).
            snr: target SNR of the reconstruction (see the module docstring).
            noise_rng: the generator for this particle's noise.
            empty_noise_sigma: projection noise sigma for an empty subtomogram.

        Returns:
            (volume (n, n, n) float32, signal variance, projection noise sigma).
        """
        if snr <= 0:
            raise TomosiftError(f"SNR must be > 0, got {snr}")
        if self.settings.reconstruction == "wedge":
            signal, noise = self._wedge_volumes(spectrum, rotation, shift_voxels, noise_rng)
        else:
            noise_values = self.noise_slices(noise_rng) * self.noise_filter
            if spectrum is None:
                (noise,) = self.reconstruct(noise_values)
                signal = np.zeros_like(noise)
            else:
                signal_values = self.signal_slices(spectrum, rotation, shift_voxels)
                signal, noise = self.reconstruct(signal_values * self.signal_filter, noise_values)
        signal_variance = float(signal.var(dtype=np.float64))
        if spectrum is None:
            if empty_noise_sigma is None:
                raise TomosiftError("an empty subtomogram needs the dataset's noise level")
            sigma = empty_noise_sigma
        else:
            sigma = self.noise_sigma(signal_variance, snr)
        return signal + np.float32(sigma) * noise, signal_variance, sigma

    def noise_sigma(self, signal_variance: float, snr: float) -> float:
        """Projection noise sigma that gives ``snr`` for a reconstruction of this variance."""
        return float(np.sqrt(signal_variance / (snr * self.noise_gain)))

    # -- helpers --------------------------------------------------------------------------

    def _calibrate_noise_gain(self) -> float:
        """Mean variance of the reconstruction of unit projection noise (fixed seed)."""
        rng = np.random.default_rng(zlib.crc32(b"tomosift noise gain"))
        variances = []
        for _ in range(CALIBRATION_REALISATIONS):
            if self.settings.reconstruction == "wedge":
                noise = self._wedge_volumes(None, np.eye(3), np.zeros(3), rng)[1]
            else:
                (noise,) = self.reconstruct(self.noise_slices(rng) * self.noise_filter)
            variances.append(noise.var(dtype=np.float64))
        return float(np.mean(variances))

    def wedge_transfer(self) -> tuple[np.ndarray, np.ndarray]:
        """3D (signal, noise) transfer functions of the ``wedge`` approximation, rfft layout."""
        if self._wedge_transfer is None:
            n = self.box_voxels
            kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
            ky = np.fft.fftfreq(n, 1.0 / n)[None, :, None]
            kx = np.fft.rfftfreq(n, 1.0 / n)[None, None, :]
            radius_xz = np.hypot(kx, kz)
            tilt_limit = np.deg2rad(self.settings.tilt_max_deg)
            in_wedge = (np.arctan2(np.abs(kz), kx) <= tilt_limit + 1e-9) | (radius_xz == 0)
            sampled = in_wedge & (radius_xz <= n / 2)
            ctf_values, mtf_values = detector_transfer(
                np.sqrt(kx**2 + kz**2), ky, n, self.settings.voxel_size_nm, self.settings.optics
            )
            signal = (sampled * ctf_values * mtf_values).astype(np.float32)
            noise = signal if self.settings.noise_stage == "before_ctf" else sampled * mtf_values
            self._wedge_transfer = (signal, noise.astype(np.float32))
        return self._wedge_transfer

    def _wedge_volumes(self, spectrum, rotation, shift_voxels, noise_rng):
        n = self.box_voxels
        signal_transfer, noise_transfer = self.wedge_transfer()
        volumes = []
        if spectrum is not None:
            kz, ky, kx = np.meshgrid(
                np.fft.fftfreq(n, 1.0 / n), np.fft.fftfreq(n, 1.0 / n),
                np.fft.rfftfreq(n, 1.0 / n), indexing="ij",
            )
            points = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1)
            values = sample_spectrum(spectrum, (points @ rotation) * (spectrum.shape[0] / n))
            phase = (points @ np.asarray(shift_voxels, dtype=np.float64)) * (-2 * np.pi / n)
            grid = (values * np.exp(1j * phase)).reshape(signal_transfer.shape) * signal_transfer
            volumes.append(np.fft.fftshift(np.fft.irfftn(grid, s=(n,) * 3, axes=(0, 1, 2))))
        else:
            volumes.append(np.zeros((n, n, n)))
        if noise_rng is not None:
            white = noise_rng.standard_normal((n, n, n), dtype=np.float32)
            filtered = np.fft.irfftn(np.fft.rfftn(white) * noise_transfer, s=(n,) * 3,
                                     axes=(0, 1, 2))
            volumes.append(filtered)
        else:
            volumes.append(np.zeros((n, n, n)))
        return [v.astype(np.float32) for v in volumes]


def _insertion_matrix(points: np.ndarray, n: int) -> sparse.csr_matrix:
    """Sparse (n * n * (n//2+1), M) trilinear gridding matrix from slice samples to the grid.

    Neighbours outside the stored half-space (x < 0 or x > n/2) are dropped; y and z wrap.
    """
    nx = n // 2 + 1
    rows, cols, values = [], [], []
    sample = np.arange(len(points))
    for corner, weight in trilinear_corners(points):
        keep = (corner[:, 0] >= 0) & (corner[:, 0] < nx) & (weight > 0)
        ix, iy, iz = corner[keep, 0], corner[keep, 1] % n, corner[keep, 2] % n
        rows.append((iz * n + iy) * nx + ix)
        cols.append(sample[keep])
        values.append(weight[keep])
    matrix = sparse.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n * n * nx, len(points)),
    )
    matrix.sum_duplicates()
    return matrix
