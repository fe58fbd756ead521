"""Tilt-series simulation and subtomogram reconstruction, in Fourier space.

For each particle (paper Section 3.1.1): the density map is rotated and shifted, projected
over a single-axis tilt series about y, each projection gets noise, the CTF and the detector
MTF, and the subtomogram is reconstructed by direct Fourier inversion.

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

De-apodisation: trilinear gridding, like any gridding kernel, multiplies the reconstruction
in real space by the kernel's transform, so without correction the noise of a subtomogram
falls to about 0.6 of its central standard deviation at the box faces (0.4 of its variance),
and the signal near the faces is damped alike. Each slice grid therefore measures that
apodisation once (the standard deviation, per plane along x, y and z, of reconstructions of
white noise, fixed seed) and divides every reconstruction by it: noise comes out stationary,
as in a subtomogram cut from a tomogram.

The box edge: a discrete transform describes a periodic volume, so a particle reconstructed
in its own n-voxel box would wrap around: density shifted out through one face would come
back through the opposite one (an artefact that correlates with the size of the complex). The
signal is therefore reconstructed in a larger box of ``signal_box_voxels`` (m > n) and the
central n³ cropped, as a subtomogram is cut out of a tomogram: density that leaves the box is
gone. The box must satisfy ``m > n / 2 + reach``, where reach is how far (per axis, in voxels)
any density lies from the centre; :func:`required_signal_box` gives the smallest such m.
Noise is stationary, so it is reconstructed directly in the n-voxel box.

Frequencies are in voxel units of the box they belong to; grids are numpy's ``rfftn`` layout
of an (m, m, m) volume indexed [z, y, x]; the real-space origin is voxel m // 2 (n // 2 after
cropping). A particle pose (R, t) places the map as ``f_p(x) = f(R^T (x - t))``: rotated by R
about the origin, then shifted by t voxels.

Reconstruction modes:

* ``fourier`` (default): direct Fourier inversion with gridding weights and weight
  normalisation.
* ``wbp``: weighted back-projection, done in Fourier space (back-projection is the adjoint of
  slice extraction): slices are weighted by the ramp |u| * dtheta and summed without weight
  normalisation.
* ``wedge``: an *approximation*, never the default: the particle's 3D transform is multiplied by
  CTF x MTF x missing-wedge mask and filtered white noise is added in 3D. No tilt sampling,
  no gridding; use it for quick experiments only.

Noise and the SNR contract of the paper's setting (:meth:`TiltSeriesGeometry.particle`):
SNR = var(signal) / var(noise) of the reconstructed subtomogram over the whole box, where
signal is the same reconstruction without noise. The per-projection noise standard deviation is
set per particle to ``sqrt(var(signal) / (SNR * g))``, where g is the variance that unit
projection noise has after filtering and reconstruction (calibrated once per geometry). Noise
is added to the projections before the CTF and MTF by default, as the paper describes
(``noise_stage='before_ctf'``); ``after_ctf`` filters it by the MTF only. The detector-noise
model of :mod:`tomosift.simulate.dose` uses :meth:`TiltSeriesGeometry.clean_signal` and
:meth:`TiltSeriesGeometry.unit_noise` directly, with one noise level for every particle.

Output: float32, no normalisation, polarity as recorded (particles dark with the CTF on; see
:mod:`tomosift.simulate.ctf`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft
import scipy.sparse as sparse

from tomosift.errors import TomosiftError
from tomosift.grids import trilinear_corners
from tomosift.simulate.ctf import Optics, b_factor_envelope, ctf, mtf
from tomosift.simulate.specimen import Ice

RECONSTRUCTION_MODES = ("fourier", "wbp", "wedge")
POLARITIES = ("recorded", "white")
NOISE_STAGES = ("before_ctf", "after_ctf")
CALIBRATION_REALISATIONS = 16
APODISATION_REALISATIONS = 16
# Defocus values at which the noise gain is calibrated when each particle has its own defocus
# and noise passes the CTF (gains in between are interpolated linearly).
GAIN_TABLE_POINTS = 9
# Output voxels whose summed gridding weight is below this are left empty (the missing wedge).
MIN_GRIDDING_WEIGHT = 0.5
# Reach margin of required_signal_box: interpolation, gridding and the de-apodisation near the
# signal box's faces spread density a few voxels beyond the map's support (with 2 voxels, 0.3%
# of the largest complex's density still reached the far face; with 8, under 0.1%).
REACH_MARGIN_VOXELS = 8

#: One particle in the box: (padded spectrum, rotation (3, 3), shift (3,) x, y, z voxels).
Placement = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SimulationSettings:
    """Everything that defines the imaging of one dataset (defaults: the paper's).

    ``signal_box_voxels``: the box the signal is reconstructed in before the central
    ``box_voxels`` are cropped (see the module docstring); None = 1.5 x box_voxels, rounded up
    to an even, FFT-friendly size. Dataset simulation sets it from the particles' reach.
    ``ice``: the ice layer and solvent (:mod:`tomosift.simulate.specimen`; vacuum by default).
    ``polarity``: ``recorded`` keeps the contrast the microscope records (particles dark with
    the CTF on); ``white`` inverts it so that particles are white (positive), as RELION expects
    of extracted particles (``--invert_contrast``).
    """

    box_voxels: int = 40
    voxel_size_nm: float = 0.92
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 2.0
    optics: Optics = field(default_factory=Optics)
    reconstruction: str = "fourier"
    noise_stage: str = "before_ctf"
    pad_factor: int = 2
    signal_box_voxels: int | None = None
    ice: Ice = field(default_factory=Ice)
    polarity: str = "recorded"

    def __post_init__(self) -> None:
        if not 0 < self.tilt_max_deg <= 90:
            raise TomosiftError(f"tilt_max_deg must be in (0, 90], got {self.tilt_max_deg}")
        if self.tilt_step_deg <= 0:
            raise TomosiftError(f"tilt_step_deg must be > 0, got {self.tilt_step_deg}")
        if self.reconstruction not in RECONSTRUCTION_MODES:
            raise TomosiftError(f"reconstruction must be one of {RECONSTRUCTION_MODES}")
        if self.noise_stage not in NOISE_STAGES:
            raise TomosiftError(f"noise_stage must be one of {NOISE_STAGES}")
        if self.polarity not in POLARITIES:
            raise TomosiftError(f"polarity must be one of {POLARITIES}, not '{self.polarity}'")
        if self.box_voxels < 8 or self.box_voxels % 2:
            raise TomosiftError(f"box_voxels must be even and >= 8, got {self.box_voxels}")
        if self.signal_box_voxels is not None and (
            self.signal_box_voxels < self.box_voxels or self.signal_box_voxels % 2
        ):
            raise TomosiftError(f"signal_box_voxels must be even and >= box_voxels "
                                f"({self.box_voxels}), got {self.signal_box_voxels}")

    @classmethod
    def from_config(cls, imaging: dict, tilt_max_deg: float) -> SimulationSettings:
        """Settings from the workflow's imaging parameters (see ``imaging_params`` in
        ``workflow/rules/common.smk``) and one tilt range."""
        ctf_config, mtf_config = imaging["ctf"], imaging["mtf"]
        defocus_range = ctf_config.get("defocus_range_um")
        optics = Optics(
            voltage_kv=ctf_config["voltage_kv"], cs_mm=ctf_config["cs_mm"],
            defocus_um=ctf_config["defocus_um"],
            amplitude_contrast=ctf_config["amplitude_contrast"],
            ctf_enabled=ctf_config["enabled"], mtf_enabled=mtf_config["enabled"],
            defocus_range_um=tuple(defocus_range) if defocus_range else None,
            b_factor_a2=ctf_config.get("b_factor_a2", 0.0),
        )
        return cls(
            box_voxels=imaging["box_voxels"], voxel_size_nm=imaging["voxel_size_nm"],
            tilt_max_deg=float(tilt_max_deg), tilt_step_deg=imaging["tilt_step_deg"],
            optics=optics, reconstruction=imaging["reconstruction"],
            noise_stage=imaging["noise_stage"], pad_factor=imaging["pad_factor"],
            ice=Ice(**imaging.get("ice", {})), polarity=imaging.get("polarity", "recorded"),
        )

    @property
    def dark_particles(self) -> bool:
        """Whether particles come out dark (negative): the CTF on and the contrast recorded."""
        return self.optics.ctf_enabled and self.polarity == "recorded"

    @property
    def tilt_angles_deg(self) -> np.ndarray:
        """Tilt angles from -theta to +theta in steps of tilt_step_deg."""
        return np.arange(-self.tilt_max_deg, self.tilt_max_deg + 1e-9, self.tilt_step_deg)

    @property
    def resolved_signal_box_voxels(self) -> int:
        if self.signal_box_voxels is not None:
            return self.signal_box_voxels
        return _even_fast_size(self.box_voxels + self.box_voxels // 2)


def required_signal_box(box_voxels: int, reach_voxels: float) -> int:
    """Smallest even, FFT-friendly signal box in which density reaching ``reach_voxels`` from
    the centre (per axis) cannot wrap into the central ``box_voxels``."""
    needed = int(np.floor(box_voxels / 2 + reach_voxels + REACH_MARGIN_VOXELS)) + 1
    return _even_fast_size(max(box_voxels, needed))


def _even_fast_size(size: int) -> int:
    size = scipy.fft.next_fast_len(size, real=True)
    while size % 2:
        size = scipy.fft.next_fast_len(size + 1, real=True)
    return size


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


def crop_centre(volume: np.ndarray, box_voxels: int) -> np.ndarray:
    """The central ``box_voxels``³ of an (m, m, m) volume (origins m // 2 and n // 2 agree)."""
    start = volume.shape[0] // 2 - box_voxels // 2
    return volume[start : start + box_voxels, start : start + box_voxels,
                  start : start + box_voxels]


class _FourierGrid:
    """Sample points of one box's Fourier data and their reconstruction into a volume.

    Subclasses define ``points`` (M, 3) x, y, z frequencies in this box's voxel units,
    ``detector_radius`` (M,) the detector frequency radius (index units) at which the CTF and
    MTF apply, :meth:`white_noise` and :meth:`reconstruct`.
    """

    box: int
    points: np.ndarray
    detector_radius: np.ndarray
    settings: SimulationSettings

    def sample(self, spectrum: np.ndarray, rotation: np.ndarray,
               shift_voxels: np.ndarray) -> np.ndarray:
        """Noise-free samples (M,) of a particle: rotated, shifted, before filtering."""
        scale = spectrum.shape[0] / self.box
        # F_p(q) = exp(-2 pi i q.t) F(R^T q); with q as row vectors R^T q is q @ R.
        values = sample_spectrum(spectrum, (self.points @ rotation) * scale)
        phase = ((self.points @ np.asarray(shift_voxels, dtype=np.float64))
                 * (-2 * np.pi / self.box)).astype(np.float32)
        ramp = np.empty(len(phase), dtype=np.complex64)  # cos + i sin: 6x faster than exp
        ramp.real = np.cos(phase)
        ramp.imag = np.sin(phase)
        return values * ramp

    def transfer(self, defocus_um: float | None, with_ctf: bool, with_envelope: bool):
        """(M,) float32 CTF x MTF (x the B-factor envelope) at the samples."""
        optics = self.settings.optics
        if defocus_um is not None:
            optics = replace(optics, defocus_um=float(defocus_um))
        frequency_per_nm = self.detector_radius / (self.box * self.settings.voxel_size_nm)
        values = mtf(self.detector_radius / (self.box / 2), optics)
        if with_ctf:
            values = values * ctf(frequency_per_nm, optics)
        if with_envelope:
            values = values * b_factor_envelope(frequency_per_nm, optics.b_factor_a2)
        return values.astype(np.float32)

    def white_noise(self, rng: np.random.Generator, tilt_sigma: np.ndarray | None = None):
        raise NotImplementedError

    def reconstruct(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _axis_apodisation(grid: _FourierGrid, reconstruct) -> np.ndarray:
    """(m, m, m) separable real-space apodisation of a grid's reconstruction, 1 at the centre:
    the per-plane standard deviation along each axis of reconstructed white noise, made
    symmetric about the centre."""
    m = grid.box
    rng = np.random.default_rng(zlib.crc32(b"tomosift apodisation"))
    power = np.zeros((3, m))
    for _ in range(APODISATION_REALISATIONS):
        squared = np.square(reconstruct(grid.white_noise(rng)), dtype=np.float64)
        power += [squared.mean(axis=(1, 2)), squared.mean(axis=(0, 2)), squared.mean(axis=(0, 1))]
    mirror = (m - np.arange(m)) % m  # index i <-> its mirror about voxel m // 2
    power = (power + power[:, mirror]) / 2
    profile = np.sqrt(power / power[:, m // 2 : m // 2 + 1])  # z, y, x
    return (profile[0][:, None, None] * profile[1][None, :, None]
            * profile[2][None, None, :]).astype(np.float32)


class _SliceGrid(_FourierGrid):
    """The central slices of a tilt series in an m-voxel box and their insertion.

    Slice samples are laid out as (T, m, m // 2 + 2) = (tilt, v, u) with u = -1 .. m/2 and
    v in numpy ``fftfreq`` order: the half-plane u >= 0 of each projection's 2D transform plus
    the column u = -1 (the conjugate of u = 1), whose samples complete the x = 0 plane of the
    half-space output grid.
    """

    def __init__(self, settings: SimulationSettings, box: int):
        self.settings = settings
        self.box = box
        angles = settings.tilt_angles_deg
        self.n_tilts = len(angles)
        u_values = np.arange(-1, box // 2 + 1)
        v_values = np.fft.fftfreq(box, 1.0 / box)
        v_grid, u_grid = np.meshgrid(v_values, u_values, indexing="ij")  # (m, m//2+2)
        u_index = np.broadcast_to(u_grid, (self.n_tilts, *u_grid.shape)).ravel()
        v_index = np.broadcast_to(v_grid, (self.n_tilts, *v_grid.shape)).ravel()
        self.detector_radius = np.hypot(u_index, v_index)
        detector = np.stack([u_grid.ravel(), v_grid.ravel(), np.zeros(u_grid.size)], axis=1)
        # Specimen-frame frequency of detector frequency (u, v) at tilt theta: R_theta^T (u,v,0).
        slices = [detector @ rotation_about_y(np.deg2rad(a)) for a in angles]
        self.points = np.concatenate(slices).astype(np.float64)  # (M, 3) voxel units
        self.insertion = _insertion_matrix(self.points, box)
        weights = np.asarray(self.insertion @ np.ones(self.insertion.shape[1], np.float32))
        self.gridding_weight = weights.reshape(box, box, box // 2 + 1)
        if settings.reconstruction == "wbp":
            step_rad = np.deg2rad(settings.tilt_step_deg)
            ramp = np.abs(u_index) * step_rad
            ramp[u_index == 0] = 1.0 / self.n_tilts
            self.sample_weight = ramp.astype(np.float32)
            self.output_scale = np.ones_like(self.gridding_weight, dtype=np.float32)
        else:
            self.sample_weight = np.ones(len(u_index), dtype=np.float32)
            sampled = self.gridding_weight >= MIN_GRIDDING_WEIGHT
            scale = np.where(sampled, 1.0 / np.maximum(self.gridding_weight, 1e-12), 0)
            self.output_scale = scale.astype(np.float32)
        self.apodisation = _axis_apodisation(self, self._gridded)

    def white_noise(self, rng: np.random.Generator, tilt_sigma: np.ndarray | None = None):
        """Transforms (M,) of white noise projections, one per tilt, of standard deviation 1
        or ``tilt_sigma`` (T,) per tilt."""
        m = self.box
        noise = rng.standard_normal((self.n_tilts, m, m), dtype=np.float32)
        if tilt_sigma is not None:
            noise *= np.asarray(tilt_sigma, dtype=np.float32)[:, None, None]
        spectrum = np.fft.rfft2(noise)  # (T, v, u = 0 .. m/2)
        minus_v = (-np.arange(m)) % m
        column_u_minus_1 = np.conj(spectrum[:, minus_v, 1:2])
        return np.concatenate([column_u_minus_1, spectrum], axis=2).astype(np.complex64).ravel()

    def reconstruct(self, values: np.ndarray) -> np.ndarray:
        """Insert filtered samples (M,) and return the (m, m, m) float32 volume, corrected
        for the gridding's apodisation."""
        return self._gridded(values) / self.apodisation

    def _gridded(self, values: np.ndarray) -> np.ndarray:
        m = self.box
        weighted = values * self.sample_weight
        inserted = self.insertion @ np.stack([weighted.real, weighted.imag], axis=1)
        grid = (inserted[:, 0] + 1j * inserted[:, 1]).reshape(m, m, m // 2 + 1)
        grid *= self.output_scale
        volume = np.fft.irfftn(grid, s=(m, m, m), axes=(0, 1, 2))
        return np.fft.fftshift(volume).astype(np.float32)


class _WedgeGrid(_FourierGrid):
    """The ``wedge`` approximation: the whole 3D rfft grid of an m-voxel box, masked by the
    sampled double wedge; noise is white in 3D."""

    def __init__(self, settings: SimulationSettings, box: int):
        self.settings = settings
        self.box = box
        kz, ky, kx = np.meshgrid(np.fft.fftfreq(box, 1.0 / box), np.fft.fftfreq(box, 1.0 / box),
                                 np.fft.rfftfreq(box, 1.0 / box), indexing="ij")
        self.points = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1)
        radius_xz = np.hypot(kx, kz)
        tilt_limit = np.deg2rad(settings.tilt_max_deg)
        in_wedge = (np.arctan2(np.abs(kz), kx) <= tilt_limit + 1e-9) | (radius_xz == 0)
        self.sampled = (in_wedge & (radius_xz <= box / 2)).astype(np.float32)
        self.detector_radius = np.sqrt(kx**2 + ky**2 + kz**2).ravel()

    def white_noise(self, rng: np.random.Generator, tilt_sigma: np.ndarray | None = None):
        """Transform of 3D white noise (there are no tilts: a per-tilt sigma enters as its rms)."""
        m = self.box
        white = rng.standard_normal((m, m, m), dtype=np.float32)
        if tilt_sigma is not None:
            white *= np.float32(np.sqrt(np.mean(np.square(tilt_sigma))))
        return np.fft.rfftn(white).astype(np.complex64).ravel()

    def reconstruct(self, values: np.ndarray) -> np.ndarray:
        m = self.box
        grid = values.reshape(self.sampled.shape) * self.sampled
        volume = np.fft.irfftn(grid, s=(m, m, m), axes=(0, 1, 2))
        return np.fft.fftshift(volume).astype(np.float32)


class TiltSeriesGeometry:
    """Everything about a tilt scheme that is the same for every particle.

    The signal is reconstructed in the ``signal_box_voxels`` box and cropped to
    ``box_voxels``; noise is reconstructed in the ``box_voxels`` box.
    """

    def __init__(self, settings: SimulationSettings):
        self.settings = settings
        n = settings.box_voxels
        m = settings.resolved_signal_box_voxels
        self.box_voxels = n
        self.signal_box_voxels = m
        self.angles_deg = settings.tilt_angles_deg
        grid_type = _WedgeGrid if settings.reconstruction == "wedge" else _SliceGrid
        self.signal_grid = grid_type(settings, m)
        self.noise_grid = self.signal_grid if m == n else grid_type(settings, n)
        self._transfers: dict = {}
        self._gains: dict = {}

    @property
    def gridding_weight(self) -> np.ndarray:
        """(n, n, n // 2 + 1) summed gridding weights of the n-voxel box (not for ``wedge``)."""
        return self.noise_grid.gridding_weight

    # -- filters ------------------------------------------------------------------------

    def signal_transfer(self, defocus_um: float | None = None) -> np.ndarray:
        """CTF x MTF x envelope at the signal samples; None = the optics' nominal defocus."""
        if defocus_um is not None:
            return self.signal_grid.transfer(defocus_um, self.settings.optics.ctf_enabled, True)
        if "signal" not in self._transfers:
            self._transfers["signal"] = self.signal_grid.transfer(
                None, self.settings.optics.ctf_enabled, True)
        return self._transfers["signal"]

    def noise_transfer(self, defocus_um: float | None = None) -> np.ndarray:
        """The filter of projection noise: CTF x MTF before the CTF, the MTF after it."""
        with_ctf = self.settings.noise_stage == "before_ctf" and self.settings.optics.ctf_enabled
        if with_ctf and defocus_um is not None:
            return self.noise_grid.transfer(defocus_um, True, False)
        if "noise" not in self._transfers:
            self._transfers["noise"] = self.noise_grid.transfer(None, with_ctf, False)
        return self._transfers["noise"]

    # -- signal and noise ---------------------------------------------------------------

    def clean_signal(self, placements: Sequence[Placement],
                     defocus_um: float | None = None) -> np.ndarray:
        """Noise-free reconstruction (n, n, n) of the particles placed in the box.

        Args:
            placements: (padded spectrum, rotation (3, 3), shift (3,) x, y, z voxels) of each
                particle; the centre particle and any neighbours.
            defocus_um: this particle's defocus; None = the optics' nominal value.
        """
        n = self.box_voxels
        if not placements:
            return np.zeros((n, n, n), dtype=np.float32)
        grid = self.signal_grid
        values = grid.sample(*placements[0])
        for placement in placements[1:]:
            values += grid.sample(*placement)
        volume = grid.reconstruct(values * self.signal_transfer(defocus_um))
        return np.ascontiguousarray(crop_centre(volume, n))

    def clean_particle(self, spectrum: np.ndarray, rotation: np.ndarray,
                       shift_voxels: np.ndarray, defocus_um: float | None = None) -> np.ndarray:
        """Noise-free reconstruction (n, n, n) of one particle."""
        return self.clean_signal([(spectrum, rotation, shift_voxels)], defocus_um)

    def unit_noise(self, rng: np.random.Generator, defocus_um: float | None = None,
                   tilt_sigma: np.ndarray | None = None) -> np.ndarray:
        """Reconstruction (n, n, n) of white projection noise, filtered as the noise stage says.

        Args:
            rng: the generator of this particle's noise.
            defocus_um: the particle's defocus (matters when noise passes the CTF).
            tilt_sigma: (T,) per-projection standard deviations; None = 1 for every tilt.
        """
        values = self.noise_grid.white_noise(rng, tilt_sigma) * self.noise_transfer(defocus_um)
        return self.noise_grid.reconstruct(values)

    def noise_gain_at(self, defocus_um: float | None = None) -> float:
        """Mean variance of the reconstruction of unit projection noise (fixed seed) for a
        particle of this defocus (None = nominal)."""
        if self.settings.noise_stage == "after_ctf" or not self.settings.optics.ctf_enabled:
            defocus_um = None
        value_range = self.settings.optics.defocus_range_um
        if defocus_um is None or value_range is None:
            return self._calibrated_gain(defocus_um)
        defocus_table = np.linspace(*value_range, GAIN_TABLE_POINTS)
        gains = [self._calibrated_gain(float(d)) for d in defocus_table]
        return float(np.interp(defocus_um, defocus_table, gains))

    @property
    def noise_gain(self) -> float:
        """The noise gain at the nominal defocus."""
        return self.noise_gain_at(None)

    def _calibrated_gain(self, defocus_um: float | None) -> float:
        key = None if defocus_um is None else round(float(defocus_um), 9)
        if key not in self._gains:
            rng = np.random.default_rng(zlib.crc32(b"tomosift noise gain"))
            variances = [self.unit_noise(rng, defocus_um).var(dtype=np.float64)
                         for _ in range(CALIBRATION_REALISATIONS)]
            self._gains[key] = float(np.mean(variances))
        return self._gains[key]

    # -- the paper's particle -------------------------------------------------------------

    def particle(
        self,
        spectrum: np.ndarray | None,
        rotation: np.ndarray,
        shift_voxels: np.ndarray,
        snr: float,
        noise_rng: np.random.Generator,
        empty_noise_sigma: float | None = None,
        defocus_um: float | None = None,
        neighbours: Sequence[Placement] = (),
    ) -> tuple[np.ndarray, float, float]:
        """Simulate one subtomogram at a target SNR (the paper's noise model).

        Args:
            spectrum: the class's padded spectrum, or None for an empty subtomogram.
            rotation, shift_voxels: the pose (see :meth:`clean_signal`).
            snr: target SNR of the reconstruction (see the module docstring).
            noise_rng: the generator for this particle's noise.
            empty_noise_sigma: projection noise sigma for an empty subtomogram.
            defocus_um: this particle's defocus; None = nominal.
            neighbours: further particles in the box (crowding); their density counts as
                signal.

        Returns:
            (volume (n, n, n) float32, signal variance, projection noise sigma).
        """
        if snr <= 0:
            raise TomosiftError(f"SNR must be > 0, got {snr}")
        placements = list(neighbours)
        if spectrum is not None:
            placements.insert(0, (spectrum, rotation, shift_voxels))
        noise = self.unit_noise(noise_rng, defocus_um)
        signal = self.clean_signal(placements, defocus_um)
        signal_variance = float(signal.var(dtype=np.float64))
        if spectrum is None:
            if empty_noise_sigma is None:
                raise TomosiftError("an empty subtomogram needs the dataset's noise level")
            sigma = empty_noise_sigma
        else:
            sigma = self.noise_sigma(signal_variance, snr, defocus_um)
        return signal + np.float32(sigma) * noise, signal_variance, sigma

    def noise_sigma(self, signal_variance: float, snr: float,
                    defocus_um: float | None = None) -> float:
        """Projection noise sigma that gives ``snr`` for a reconstruction of this variance."""
        return float(np.sqrt(signal_variance / (snr * self.noise_gain_at(defocus_um))))


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
