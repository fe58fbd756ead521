"""Alignment of subtomograms over all of SO(3) under the missing wedge.

The score is the constrained correlation of Förster et al. 2008: two volumes are compared on
the Fourier coefficients both observed, each wedge mask transformed with its volume,

    CC = sum_O Re(A conj(B)) / sqrt(sum_O |A|^2 * sum_O |B|^2),   O = M_a * M_b^R minus DC,

summed over the full Fourier grid (:func:`constrained_correlation`), so it equals a real-space
correlation of the two wedge-filtered, mean-free volumes.

The search is fast rotational matching (Kovacs & Wriggers 2002; Xu et al. 2012) on Fourier
amplitudes, which do not depend on the translation:

1. :func:`prepare`: per volume, the rfftn F and three functions on Fourier shells r = r_min ..
   r_max (index units): ``|F| M``, ``|F|^2 M`` and ``M``, each sampled by trilinear
   interpolation at quadrature points (:func:`tomosift.classify.rif.shell_quadrature`) and
   expanded in complex spherical harmonics of even degree l <= L (amplitudes and wedge masks
   are even functions, so odd degrees vanish).
2. :func:`align_prepared`: the rotational correlations ``C(R) = sum_r w_r ∫ f_r(u) g_r(R^T u)
   du`` of the three pairs (numerator ``|F_a| M_a`` with ``|F_b| M_b``, denominators
   ``|F_a|^2 M_a`` with ``M_b`` and ``M_a`` with ``|F_b|^2 M_b``) on a ZYZ Euler grid
   R = Rz(alpha) Ry(beta) Rz(gamma): with D^l_{m'm}(R) = e^{-i m' alpha} d^l_{m'm}(beta)
   e^{-i m gamma}, ``C = sum_l sum_{m' m} conj(a_lm') b_lm D^l_{m'm}(R)``, so for each beta one
   2D FFT over (m', m) gives every (alpha, gamma). The ratio numerator / sqrt(denominators) is
   the amplitude bound of the constrained correlation at rotation R (the value it would have
   if the phases matched at the best translation).
3. The best few distinct peaks of that ratio (refined to sub-grid by parabolas) are checked
   properly: the moving volume is rotated in real space, its mask by nearest-neighbour lookup,
   and the translation is the peak of the overlap-masked FFT cross-correlation (sub-voxel by
   parabolas), which is the constrained correlation at every shift. The best candidate wins.
   Screening (``AlignSettings.screen_peaks``, on by default): the peaks are first compared
   on both volumes Fourier-cropped to the box that holds the search's shells
   (:func:`coarse_box`, 26³ for 40³), the moving one turned in Fourier space
   (:func:`screen_rotation`: trilinear interpolation of its twice-oversampled spectrum, no
   real-space rotation), and only the winner is checked on the full box as above. Peaks lie
   >= 15° apart, which the low shells tell apart; the full box refines the winner's shift and
   gives its score.

There is no real-space refinement after step 3: tried (coordinate steps of 2° and 1° about
x, y, z, keeping any gain in constrained correlation), it made the rotations worse (median
error 1.2° -> 3.2° noise-free, 40³ map of 1u6g, ±60° wedge against the full map) at 5x the
cost. The constrained correlation of interpolated volumes is biased: trilinear interpolation
damps high frequencies, and a slightly wrong rotation moves the wedge overlap to where the
damped coefficients weigh less, scoring higher than the truth. The parabolic sub-grid peak of
step 2 is the better estimate.

Measured (benchmarks/align.py, dev machine, 2 cores, 40³ map of 1u6g, ±60° wedge, random
rotation and ±3-voxel shift, onto the unmasked map): 40/40 within 10° and 1 voxel noise-free
(median error 1.1°), 39/40 at SNR 0.1 (median 2.6°), the same as before issue 20's speed-ups;
113 alignments/s on 2 cores (two threads, both volumes prepared once, as in the census),
2.1x the search before issue 20 in the same run; hundreds of times faster than a
constrained-correlation search over a uniform rotation grid.

The Wigner small-d matrices are computed once per (L, beta grid) by quadrature of
``conj(Y_lm'(u)) Y_lm(Ry(beta)^T u)`` with scipy's ``sph_harm_y``, which makes them consistent
with the expansion's own spherical-harmonic convention by construction.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.special import sph_harm_y

from tomosift.classify.rif import amplitude_interpolation_matrix, shell_quadrature
from tomosift.discovery.rotations import rotation_angle_deg, transform_volume
from tomosift.discovery.wedge import fourier_frequencies, wedge_mask
from tomosift.errors import TomosiftError


@dataclass(frozen=True)
class AlignSettings:
    """How :func:`align` searches.

    Attributes:
        max_degree: largest spherical-harmonic degree L (even degrees 0 .. L are used).
        shell_min, shell_max: Fourier shells r = shell_min .. shell_max (index units, cycles
            per box); shell_max None = n // 4 + 2 (low frequencies carry the signal at low SNR
            and are the least disturbed by interpolation).
        shell_power: shell weight w_r = r ** shell_power (2 = the volume element of Fourier
            space); the amplitudes are first whitened per shell (divided by the rms of the
            observed amplitude on the shell), so the weight sets each shell's share. 0 (equal
            shares) was the most robust at SNR 0.1: 24/24 within 10° vs 22/24 for 2 (shells
            2 .. 12), and with shells up to 16, 23/24 vs 3/24.
        angular_samples: samples of alpha and gamma over 360° (beta gets half as many over
            180°): the grid step is 360 / angular_samples degrees.
        peaks: rotation peaks checked by the translational search.
        peak_separation_deg: peaks closer than this (geodesic) to a better one are skipped.
        max_shift_voxels: largest |shift| per axis searched (voxels).
        score_radius: highest frequency (index units) used in the translational search and the
            final score; None = Nyquist (n / 2).
        screen_peaks: compare the rotation peaks first on a Fourier-cropped box that holds
            the search's shells (:func:`coarse_box`) and score only the best one on the full
            box; False = every peak on the full box.
        fft_workers: scipy.fft workers for the volume transforms.
    """

    max_degree: int = 16
    shell_min: int = 2
    shell_max: int | None = None
    shell_power: float = 0.0
    angular_samples: int = 72
    peaks: int = 4
    peak_separation_deg: float = 15.0
    max_shift_voxels: float = 6.0
    score_radius: float | None = None
    screen_peaks: bool = True
    fft_workers: int = 1

    def __post_init__(self) -> None:
        if self.max_degree < 2:
            raise TomosiftError(f"max_degree must be >= 2, got {self.max_degree}")
        if self.shell_min < 1:
            raise TomosiftError(f"shell_min must be >= 1, got {self.shell_min}")
        if self.shell_max is not None and self.shell_max < self.shell_min:
            raise TomosiftError(f"shell_max must be >= shell_min = {self.shell_min}, "
                                f"got {self.shell_max}")
        if self.angular_samples < 2 * self.max_degree + 2 or self.angular_samples % 2:
            raise TomosiftError(f"angular_samples must be even and >= 2 * max_degree + 2 = "
                                f"{2 * self.max_degree + 2}, got {self.angular_samples}")
        if self.peaks < 1:
            raise TomosiftError(f"peaks must be >= 1, got {self.peaks}")
        if self.max_shift_voxels < 0:
            raise TomosiftError(f"max_shift_voxels must be >= 0, got {self.max_shift_voxels}")
        if self.score_radius is not None and self.score_radius <= 0:
            raise TomosiftError(f"score_radius must be > 0, got {self.score_radius}")

    def shells(self, box: int) -> np.ndarray:
        """The shell radii used for an n-voxel box."""
        top = box // 4 + 2 if self.shell_max is None else self.shell_max
        top = min(top, box // 2 - 1)
        if top < self.shell_min:
            raise TomosiftError(f"no Fourier shells between {self.shell_min} and {top} for "
                                f"{box}-voxel boxes")
        return np.arange(self.shell_min, top + 1)


@dataclass(frozen=True)
class Alignment:
    """A pose that maps the moving volume onto the reference.

    Attributes:
        rotation: (3, 3) R acting on (x, y, z): transform(moving, rotation, shift) ≈ reference.
        shift_voxels: (3,) (x, y, z) shift in voxels.
        score: constrained correlation in [-1, 1] at that pose.
    """

    rotation: np.ndarray
    shift_voxels: np.ndarray
    score: float


@dataclass(frozen=True)
class Prepared:
    """What :func:`align_prepared` reuses of one volume.

    Attributes:
        volume: (n, n, n) float32, mean-free.
        spectrum: (n, n, n // 2 + 1) complex64 rfftn of ``volume``.
        mask: (n, n, n // 2 + 1) float32 0/1 wedge mask (rfftn layout).
        full_mask: (n, n, n) bool mask in full FFT layout, for rotating it by lookup.
        coefficients: (3, S, L // 2 + 1, 2L + 1) complex128 spherical-harmonic coefficients
            of ``|F| M``, ``|F|^2 M`` and ``M`` (whitened amplitudes) per shell, degree, order
            m = -L .. L (zero where |m| > l).
        coarse: the same volume Fourier-cropped to the box that holds the rotational
            search's shells (:func:`coarse_box`), for screening the rotation peaks; None when
            that box is the full one or screening is off.
    """

    volume: np.ndarray
    spectrum: np.ndarray
    mask: np.ndarray
    full_mask: np.ndarray
    coefficients: np.ndarray
    coarse: Prepared | None = None

    @property
    def box(self) -> int:
        return self.volume.shape[0]

    @functools.cached_property
    def power(self) -> np.ndarray:
        """(n, n, n // 2 + 1) float32 |F|^2 of ``spectrum``."""
        return self.spectrum.real**2 + self.spectrum.imag**2

    @functools.cached_property
    def centred(self) -> np.ndarray:
        """(P,) complex64 spectrum of the volume about its centre c = n // 2, F(k)
        exp(2 pi i k.c / n), at the half-grid frequencies :func:`_screen_grid` lists."""
        grid = _screen_grid(self.box)
        phase = np.exp(2j * np.pi * (grid.points @ np.full(3, self.box // 2)) / self.box)
        return (self.spectrum.reshape(-1)[grid.flat] * phase).astype(np.complex64)

    @functools.cached_property
    def oversampled(self) -> np.ndarray:
        """(2n, 2n, 2n) complex64 full FFT of the volume about its centre, zero-padded to
        twice the box: the spectrum sampled at half-integer frequencies, for evaluating it
        at rotated frequencies by trilinear interpolation."""
        box = self.box
        centre = box // 2
        padded = np.zeros((2 * box,) * 3, dtype=np.float32)
        index = (np.arange(box) - centre) % (2 * box)
        padded[np.ix_(index, index, index)] = self.volume
        return scipy.fft.fftn(padded).astype(np.complex64)


# -- spherical harmonics ------------------------------------------------------------------


def _degrees(max_degree: int) -> np.ndarray:
    return np.arange(0, max_degree + 1, 2)


def _harmonics(theta: np.ndarray, phi: np.ndarray, max_degree: int) -> np.ndarray:
    """Y_lm at points (M,), even l: (M, L // 2 + 1, 2L + 1) complex, zero where |m| > l."""
    out = np.zeros((len(theta), max_degree // 2 + 1, 2 * max_degree + 1), dtype=np.complex128)
    for index, degree in enumerate(_degrees(max_degree)):
        orders = np.arange(-degree, degree + 1)
        out[:, index, orders + max_degree] = sph_harm_y(
            degree, orders[None, :], theta[:, None], phi[:, None]
        )
    return out


@dataclass(frozen=True)
class _ShellOperator:
    voxels: np.ndarray  # (V,) flat rfftn indices, all shells
    bounds: tuple[int, ...]  # shell s reads voxels[bounds[s]:bounds[s + 1]]
    matrices: tuple[np.ndarray, ...]  # per shell (V_s, 2 K) float32: real, imag of coefficients
    columns: np.ndarray  # (K,) flat (degree, order) indices of the K coefficients with m >= 0


def _orders_kept(max_degree: int) -> np.ndarray:
    """Flat indices into (L // 2 + 1, 2L + 1) of the coefficients with 0 <= m <= l; those
    with m < 0 follow from them for real functions: a_l,-m = (-1)^m conj(a_lm)."""
    size = 2 * max_degree + 1
    return np.array([index * size + max_degree + order
                     for index, degree in enumerate(_degrees(max_degree))
                     for order in range(degree + 1)])


@functools.lru_cache(maxsize=8)
def _shell_operator(box: int, radii: tuple[int, ...], max_degree: int) -> _ShellOperator:
    """Linear maps from rfftn values to SH coefficients a_lm = ∫ f conj(Y_lm) per shell."""
    voxel_parts, matrices, bounds = [], [], [0]
    columns = _orders_kept(max_degree)
    for radius in radii:
        theta, phi, weights = shell_quadrature(radius, max_degree)
        direction = np.stack(
            [np.cos(theta), np.sin(theta) * np.sin(phi), np.sin(theta) * np.cos(phi)], axis=1
        )  # (z, y, x)
        voxels, interp = amplitude_interpolation_matrix(radius * direction, box)
        basis = np.conj(_harmonics(theta, phi, max_degree)).reshape(len(theta), -1)[:, columns]
        basis *= weights[:, None]
        matrix = interp.T @ basis  # (V, K) complex
        matrices.append(np.ascontiguousarray(
            np.concatenate([matrix.real, matrix.imag], axis=1), dtype=np.float32))
        voxel_parts.append(voxels)
        bounds.append(bounds[-1] + len(voxels))
    return _ShellOperator(np.concatenate(voxel_parts), tuple(bounds), tuple(matrices), columns)


@functools.lru_cache(maxsize=4)
def _wigner_small_d(max_degree: int, betas: tuple[float, ...]) -> np.ndarray:
    """d^l_{m'm}(beta) = ∫ conj(Y_lm'(u)) Y_lm(Ry(beta)^T u) du, even l.

    Returns (B, L // 2 + 1, 2L + 1, 2L + 1) float64, indexed [beta, l, m' + L, m + L].
    """
    theta, phi, weights = shell_quadrature(1.0, max_degree, 2 * max_degree)
    points = np.stack(
        [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1
    )
    left = np.conj(_harmonics(theta, phi, max_degree)) * weights[:, None, None]
    out = np.empty((len(betas), max_degree // 2 + 1, 2 * max_degree + 1, 2 * max_degree + 1))
    for index, beta in enumerate(betas):
        c, s = math.cos(beta), math.sin(beta)
        rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        rotated = points @ rotation  # rows (R^T u)^T
        rotated_theta = np.arccos(np.clip(rotated[:, 2], -1.0, 1.0))
        rotated_phi = np.arctan2(rotated[:, 1], rotated[:, 0])
        right = _harmonics(rotated_theta, rotated_phi, max_degree)
        out[index] = np.einsum("ilp,ilq->lpq", left, right).real
    return out


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _zyz(alpha: float, beta: float, gamma: float) -> np.ndarray:
    return _rz(alpha) @ _ry(beta) @ _rz(gamma)


# -- masks and scores ---------------------------------------------------------------------


def _full_layout(values: np.ndarray, box: int) -> np.ndarray:
    """(n, n, n) full-layout array of an even rfftn-layout one (V(-k) = V(k))."""
    full = np.empty((box, box, box), dtype=values.dtype)
    half = box // 2 + 1
    full[:, :, :half] = values
    mirror = (-np.arange(box)) % box
    rest = np.arange(half, box)
    full[:, :, rest] = values[mirror][:, mirror][:, :, mirror[rest]]
    return full


def _full_mask(mask: np.ndarray, box: int) -> np.ndarray:
    """(n, n, n) bool full-layout mask of an rfftn-layout one (masks are even: M(-k) = M(k))."""
    return _full_layout(mask > 0.5, box)


@functools.lru_cache(maxsize=4)
def _frequency_grid(box: int) -> np.ndarray:
    """(n * n * (n // 2 + 1), 3) float32 rfftn frequencies (x, y, z), index units."""
    return fourier_frequencies(box).reshape(-1, 3).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _half_weights(box: int, radius: float | None) -> np.ndarray:
    """(n, n, n // 2 + 1) float32: how often each rfftn coefficient occurs in the full grid
    (1 on the kx = 0 and Nyquist planes, else 2), 0 at DC and beyond ``radius``."""
    weights = np.full((box, box, box // 2 + 1), 2.0, dtype=np.float32)
    weights[:, :, 0] = 1.0
    if box % 2 == 0:
        weights[:, :, -1] = 1.0
    weights[0, 0, 0] = 0.0
    if radius is not None:
        k = fourier_frequencies(box)
        weights[np.einsum("...i,...i->...", k, k) > radius**2 + 1e-9] = 0.0
    return weights


def rotate_mask(mask: np.ndarray, rotation: np.ndarray, full_mask: np.ndarray | None = None
                ) -> np.ndarray:
    """Mask (rfftn layout) of a volume transformed by R: M_R(k) = M(R^T k), nearest neighbour.

    For wedge masks prefer :func:`tomosift.discovery.wedge.wedge_mask` with ``rotation``
    (exact); this works for any even mask. Returns (n, n, n // 2 + 1) float32.
    """
    box = mask.shape[0]
    if full_mask is None:
        full_mask = _full_mask(mask, box)
    points = _frequency_grid(box) @ np.asarray(rotation, dtype=np.float32)
    index = np.rint(points).astype(np.intp) % box
    values = full_mask[index[:, 2], index[:, 1], index[:, 0]]
    return values.reshape(mask.shape).astype(np.float32)


def rotate_weights(weights: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Real, even Fourier weights (rfftn layout, e.g. a particle's CTF² coverage) of a volume
    transformed by R: W_R(k) = W(R^T k), nearest neighbour. Returns (n, n, n // 2 + 1) float32.
    """
    weights = np.asarray(weights, dtype=np.float32)
    box = weights.shape[0]
    full = _full_layout(weights, box)
    points = _frequency_grid(box) @ np.asarray(rotation, dtype=np.float32)
    index = np.rint(points).astype(np.intp) % box
    return full[index[:, 2], index[:, 1], index[:, 0]].reshape(weights.shape)


@functools.lru_cache(maxsize=4)
def _observed_sphere(box: int) -> np.ndarray:
    mask = wedge_mask(box, -90.0, 90.0)
    mask.setflags(write=False)
    return mask


def _check_mask(mask: np.ndarray | None, box: int) -> np.ndarray:
    if mask is None:
        return _observed_sphere(box)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != (box, box, box // 2 + 1):
        raise TomosiftError(f"masks must have the rfftn shape {(box, box, box // 2 + 1)}, "
                            f"got {mask.shape}")
    return mask


def constrained_correlation(
    reference: np.ndarray,
    moving_transformed: np.ndarray,
    reference_mask: np.ndarray | None,
    moving_mask_transformed: np.ndarray | None,
) -> float:
    """Constrained correlation of two volumes over the Fourier coefficients both observed.

    Args:
        reference, moving_transformed: (n, n, n) volumes, the second already in the
            reference's frame.
        reference_mask, moving_mask_transformed: (n, n, n // 2 + 1) rfftn 0/1 masks, the
            second transformed with its volume; None = fully observed.

    Returns:
        sum_O Re(A conj(B)) / sqrt(sum_O |A|^2 sum_O |B|^2) over the full Fourier grid, O the
        overlap of the masks without DC; in [-1, 1] (0 if either is empty on O).
    """
    reference = np.asarray(reference, dtype=np.float32)
    box = reference.shape[0]
    if reference.shape != (box, box, box) or moving_transformed.shape != reference.shape:
        raise TomosiftError(f"expected two (n, n, n) volumes of one size, got "
                            f"{reference.shape} and {moving_transformed.shape}")
    a = scipy.fft.rfftn(reference)
    b = scipy.fft.rfftn(np.asarray(moving_transformed, dtype=np.float32))
    overlap = (_check_mask(reference_mask, box) * _check_mask(moving_mask_transformed, box)
               * _half_weights(box, None))
    return _masked_cc(a, b, overlap)


def _masked_cc(a: np.ndarray, b: np.ndarray, overlap: np.ndarray) -> float:
    numerator = float(np.sum(overlap * (a.real * b.real + a.imag * b.imag)))
    power = float(np.sum(overlap * np.abs(a) ** 2)) * float(np.sum(overlap * np.abs(b) ** 2))
    return numerator / math.sqrt(power) if power > 0 else 0.0


# -- prepare ------------------------------------------------------------------------------


def prepare(volume: np.ndarray, mask: np.ndarray | None,
            settings: AlignSettings = AlignSettings()) -> Prepared:
    """FFT, wedge mask and spherical-harmonic coefficients of one volume, for alignment.

    Args:
        volume: (n, n, n) real volume indexed [z, y, x].
        mask: (n, n, n // 2 + 1) rfftn-layout 0/1 wedge mask of the volume; None = fully
            observed (inside the Nyquist sphere).
        settings: alignment settings (the shells and degree must match between the two
            volumes of an :func:`align_prepared` call).
    """
    volume = np.asarray(volume, dtype=np.float32)
    box = volume.shape[0]
    if volume.shape != (box, box, box) or box < 8:
        raise TomosiftError(f"expected a cubic volume of at least 8³ voxels, got {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise TomosiftError("the volume contains NaN or infinite values")
    mask = _check_mask(mask, box)
    volume = volume - np.float32(volume.mean())
    spectrum = scipy.fft.rfftn(volume, workers=settings.fft_workers).astype(np.complex64)
    radii = tuple(int(r) for r in settings.shells(box))
    op = _shell_operator(box, radii, settings.max_degree)
    amplitude = (np.abs(spectrum) * mask).reshape(-1)[op.voxels]
    observed = mask.reshape(-1)[op.voxels]
    n_coefficients = len(op.columns)
    kept = np.empty((3, len(radii), n_coefficients), dtype=np.complex128)
    for shell, matrix in enumerate(op.matrices):
        part = slice(op.bounds[shell], op.bounds[shell + 1])
        values = amplitude[part]
        # Whitening: the rms observed amplitude of the shell, so all shells count comparably.
        scale = math.sqrt(float(np.sum(values**2)) / max(float(np.sum(observed[part])), 1.0))
        values = values / scale if scale > 0 else values
        stacked = np.stack([values, values**2, observed[part]]) @ matrix
        kept[:, shell] = stacked[:, :n_coefficients] + 1j * stacked[:, n_coefficients:]
    degree_max = settings.max_degree
    shape = (3, len(radii), degree_max // 2 + 1, 2 * degree_max + 1)
    coefficients = np.zeros((3, len(radii), shape[2] * shape[3]), dtype=np.complex128)
    coefficients[:, :, op.columns] = kept
    coefficients = coefficients.reshape(shape)
    positive = coefficients[..., degree_max + 1:]  # m = 1 .. L
    signs = (-1.0) ** np.arange(1, degree_max + 1)
    coefficients[..., :degree_max] = (np.conj(positive) * signs)[..., ::-1]
    coarse = None
    size = coarse_box(box, settings)
    if settings.screen_peaks and size < box:
        # scaled so that its irfftn is the m³ resampling of the n³ volume
        coarse_spectrum = crop_half_spectrum(spectrum, size) * np.float32((size / box) ** 3)
        coarse_mask = crop_half_spectrum(mask, size)
        coarse_volume = scipy.fft.irfftn(coarse_spectrum, s=(size,) * 3,
                                         workers=settings.fft_workers)
        coarse = Prepared(coarse_volume.astype(np.float32), coarse_spectrum, coarse_mask,
                          _full_mask(coarse_mask, size), coefficients[:0])
    return Prepared(volume, spectrum, mask, _full_mask(mask, box), coefficients, coarse)


@dataclass(frozen=True)
class _ScreenGrid:
    points: np.ndarray  # (P, 3) float32 frequencies (x, y, z) of the half grid, |k| < n / 2
    flat: np.ndarray  # (P,) their flat indices in the (n, n, n // 2 + 1) rfftn layout
    weights: np.ndarray  # (P,) float32 how often each occurs in the full grid (1 or 2)


@functools.lru_cache(maxsize=4)
def _screen_grid(box: int) -> _ScreenGrid:
    """The rfftn coefficients inside the Nyquist sphere but DC: what a screen compares."""
    weights = _half_weights(box, (box - 1) / 2).reshape(-1)
    flat = np.flatnonzero(weights > 0)
    return _ScreenGrid(_frequency_grid(box)[flat], flat, weights[flat])


def screen_rotation(reference: Prepared, moving: Prepared, rotation: np.ndarray,
                    max_shift_voxels: float) -> float:
    """The constrained correlation at the best shift of the moving volume rotated by R, as
    :func:`score_rotation` gives it, but with the rotated spectrum interpolated in Fourier
    space (trilinear on the twice-oversampled spectrum, :attr:`Prepared.oversampled`) at the
    frequencies inside the Nyquist sphere, instead of a real-space rotation and FFT; for
    telling rotation peaks apart."""
    box = reference.box
    grid = _screen_grid(box)
    # the moving spectrum about its centre at R^T k, on the oversampled grid (index 2 q)
    turned = (grid.points @ np.asarray(rotation, dtype=np.float32)) * np.float32(2.0)
    base = np.floor(turned)
    fraction = turned - base
    corner = base.astype(np.intp)
    size = 2 * box
    flat_source = moving.oversampled.reshape(-1)
    values = np.zeros(len(turned), dtype=np.complex64)
    for dz in (0, 1):
        wz = fraction[:, 2] if dz else 1 - fraction[:, 2]
        iz = (corner[:, 2] + dz) % size
        for dy in (0, 1):
            wzy = wz * (fraction[:, 1] if dy else 1 - fraction[:, 1])
            izy = (iz * size + (corner[:, 1] + dy) % size) * size
            for dx in (0, 1):
                weight = wzy * (fraction[:, 0] if dx else 1 - fraction[:, 0])
                values += weight * flat_source[izy + (corner[:, 0] + dx) % size]
    nearest = np.rint(turned / 2).astype(np.intp) % box
    observed = moving.full_mask[nearest[:, 2], nearest[:, 1], nearest[:, 0]]
    overlap = reference.mask.reshape(-1)[grid.flat] * observed * grid.weights
    a = reference.centred
    power = (float(np.dot(overlap, a.real**2 + a.imag**2))
             * float(np.dot(overlap, values.real**2 + values.imag**2)))
    if power <= 0:
        return -1.0
    cross = np.zeros((box, box, box // 2 + 1), dtype=np.complex64)
    cross.reshape(-1)[grid.flat] = a * np.conj(values) * np.minimum(overlap, 1.0)
    correlation = scipy.fft.irfftn(cross, s=(box,) * 3)
    return _shift_peak(correlation * box**3, max_shift_voxels)[1] / math.sqrt(power)


def coarse_box(box: int, settings: AlignSettings) -> int:
    """The even box m <= n on which the rotation peaks are screened: its Nyquist shell lies
    one shell beyond the rotational search's top shell (and the final score's radius)."""
    top = int(settings.shells(box)[-1])
    if settings.score_radius is not None:
        top = max(top, math.ceil(settings.score_radius))
    return int(min(box, 2 * (top + 1)))


def crop_half_spectrum(array: np.ndarray, size: int) -> np.ndarray:
    """The central frequencies of an (n, n, n // 2 + 1) rfftn-layout array, as
    (m, m, m // 2 + 1)."""
    box = array.shape[0]
    if size == box:
        return array
    keep = np.r_[0: (size + 1) // 2, box - size // 2: box]
    return np.ascontiguousarray(array[keep][:, keep][:, :, : size // 2 + 1])


# -- search -------------------------------------------------------------------------------


def _betas(settings: AlignSettings) -> tuple[float, ...]:
    count = settings.angular_samples // 2
    return tuple(math.pi * (np.arange(count) + 0.5) / count)


@functools.lru_cache(maxsize=4)
def _wigner_by_order(max_degree: int, betas: tuple[float, ...]) -> np.ndarray:
    """The small-d matrices as (K * K, B, L // 2 + 1) float64, K = 2L + 1: one (B, l) matrix
    per order pair (m', m), for a batched product over the degrees."""
    d = _wigner_small_d(max_degree, betas)
    out = np.ascontiguousarray(d.reshape(d.shape[0], d.shape[1], -1).transpose(2, 0, 1))
    out.setflags(write=False)
    return out


def rotational_scores(reference: Prepared, moving: Prepared,
                      settings: AlignSettings = AlignSettings()) -> np.ndarray:
    """Normalised amplitude correlation on the Euler grid.

    Returns:
        (B, N, N) float32 scores at R = Rz(alpha_j) Ry(beta_i) Rz(gamma_k), beta_i =
        pi (i + 1/2) / B, alpha_j = 2 pi j / N, gamma_k = 2 pi k / N, N = angular_samples,
        B = N / 2; R is the rotation applied to the moving volume.
    """
    max_degree = settings.max_degree
    if reference.coefficients.shape != moving.coefficients.shape:
        raise TomosiftError("the two volumes were prepared with different settings or sizes")
    betas = _betas(settings)
    d = _wigner_by_order(max_degree, betas)  # (K * K, B, l)
    radii = settings.shells(reference.box).astype(np.float64)
    weighted = np.conj(reference.coefficients) * (radii**settings.shell_power)[:, None, None]
    b = moving.coefficients
    pairs = ((0, 0), (1, 2), (2, 1))  # numerator, then the two denominators
    products = np.stack([
        np.einsum("rlp,rlq->lpq", weighted[i], b[j], optimize=True) for i, j in pairs
    ])  # (3, l, m', m)
    size = 2 * max_degree + 1
    by_order = products.reshape(3, -1, size * size).transpose(2, 1, 0)  # (K * K, l, 3)
    transfer = np.matmul(d, np.concatenate([by_order.real, by_order.imag], axis=2))
    # (m', m, B, 6): real parts of the numerator and the two denominators, then imaginary
    transfer = transfer.reshape(size, size, len(betas), 6)
    count = settings.angular_samples
    orders = np.arange(-max_degree, max_degree + 1) % count
    n_beta = len(betas)
    # The correlations are real. The numerator's 2D transform is Hermitian: an inverse real
    # FFT over m >= 0 gives it; fft2(X) = N² irfft2(conj(X)) for Hermitian X.
    upper = transfer[:, max_degree:]
    half = np.zeros((n_beta, count, count // 2 + 1), dtype=np.complex64)
    half[:, orders, : max_degree + 1] = (upper[..., 0] - 1j * upper[..., 3]).transpose(2, 0, 1)
    half[:, :, : max_degree + 1] = scipy.fft.ifft(half[:, :, : max_degree + 1], axis=1)
    numerator = scipy.fft.irfft(half, n=count, axis=2)
    numerator *= np.float32(count * count)
    # The two denominators D1, D2 share one complex FFT of D1 + i D2; the transform over m
    # runs only on the rows m' that hold coefficients.
    packed = ((transfer[..., 1] - transfer[..., 5])
              + 1j * (transfer[..., 4] + transfer[..., 2]))  # (m', m, B)
    rows = np.zeros((n_beta, size, count), dtype=np.complex64)
    rows[:, :, orders] = packed.transpose(2, 0, 1)
    full = np.zeros((n_beta, count, count), dtype=np.complex64)
    full[:, orders, :] = scipy.fft.fft(rows, axis=2)
    denominators = scipy.fft.fft(full, axis=1)
    first, second = denominators.real, denominators.imag
    floor = np.float32(1e-6 * max(float(first.max()), float(second.max()), 1e-30))
    product = np.maximum(first, floor)
    product *= np.maximum(second, floor)
    numerator /= np.sqrt(product, out=product)
    return numerator


def _parabola_offset(minus: float, centre: float, plus: float) -> float:
    curvature = minus - 2.0 * centre + plus
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


def _neighbourhood_max(scores: np.ndarray) -> np.ndarray:
    """The 3 x 3 x 3 running maximum of (B, N, N) Euler-grid scores: beta clamped at the
    poles, alpha and gamma periodic (as ``ndimage.maximum_filter`` with modes nearest, wrap,
    wrap, in a fraction of its time)."""
    out = scores.copy()
    np.maximum(out[1:], scores[:-1], out=out[1:])
    np.maximum(out[:-1], scores[1:], out=out[:-1])
    for axis in (1, 2):
        step = out.copy()
        np.maximum(out, np.roll(step, 1, axis=axis), out=out)
        np.maximum(out, np.roll(step, -1, axis=axis), out=out)
    return out


def _rotation_peaks(scores: np.ndarray, settings: AlignSettings) -> list[np.ndarray]:
    """The best distinct local maxima of the Euler-grid scores, refined by parabolas."""
    values = scores.ravel()
    candidates = np.flatnonzero(values >= _neighbourhood_max(scores).ravel())
    # Stable order: by score, ties by grid index.
    return distinct_peaks(scores, candidates[np.lexsort((candidates, -values[candidates]))],
                          settings)


def distinct_peaks(scores: np.ndarray, candidates: np.ndarray, settings: AlignSettings
                   ) -> list[np.ndarray]:
    """Rotations (3, 3) of the Euler-grid cells ``candidates`` (flat indices, best first),
    refined to sub-grid by parabolas, each at least ``peak_separation_deg`` from the ones
    kept before it; at most ``settings.peaks``."""
    n_beta, count, _ = scores.shape
    step = 2.0 * math.pi / count
    peaks: list[np.ndarray] = []
    for flat in candidates:
        i, j, k = np.unravel_index(flat, scores.shape)
        centre = scores[i, j, k]
        di = 0.0
        if 0 < i < n_beta - 1:
            di = _parabola_offset(scores[i - 1, j, k], centre, scores[i + 1, j, k])
        dj = _parabola_offset(scores[i, j - 1, k], centre, scores[i, (j + 1) % count, k])
        dk = _parabola_offset(scores[i, j, k - 1], centre, scores[i, j, (k + 1) % count])
        rotation = _zyz((j + dj) * step, (i + 0.5 + di) * step, (k + dk) * step)
        if all(rotation_angle_deg(rotation, other) >= settings.peak_separation_deg
               for other in peaks):
            peaks.append(rotation)
            if len(peaks) == settings.peaks:
                break
    return peaks


def _shift_peak(correlation: np.ndarray, max_shift: float) -> tuple[np.ndarray, float]:
    """Best shift (x, y, z) within ±max_shift per axis of a circular correlation [z, y, x]."""
    box = correlation.shape[0]
    reach = min(math.floor(max_shift), box // 2 - 1)
    window = np.r_[0 : reach + 1, box - reach : box] if reach > 0 else np.array([0])
    sub = correlation[np.ix_(window, window, window)]
    index = np.unravel_index(int(np.argmax(sub)), sub.shape)
    centre = float(sub[index])
    peak = [window[i] for i in index]
    shift = np.empty(3)
    for axis in range(3):
        minus, plus = list(peak), list(peak)
        minus[axis] = (minus[axis] - 1) % box
        plus[axis] = (plus[axis] + 1) % box
        offset = _parabola_offset(float(correlation[tuple(minus)]), centre,
                                  float(correlation[tuple(plus)]))
        signed = peak[axis] - box if peak[axis] > box // 2 else peak[axis]
        shift[2 - axis] = signed + offset
    return np.clip(shift, -max_shift, max_shift), centre


def score_rotation(reference: Prepared, moving: Prepared, rotation: np.ndarray,
                   settings: AlignSettings = AlignSettings()) -> tuple[float, np.ndarray]:
    """(constrained correlation at the best shift, that shift (x, y, z voxels)) for one
    rotation R of the moving volume: the translational search of :func:`align_prepared`."""
    box = reference.box
    rotated = transform_volume(moving.volume, rotation)
    b = scipy.fft.rfftn(rotated, workers=settings.fft_workers)
    both = reference.mask * rotate_mask(moving.mask, rotation, moving.full_mask)
    overlap = both * _half_weights(box, settings.score_radius)
    power = (float(np.vdot(overlap, reference.power))
             * float(np.vdot(overlap, b.real**2 + b.imag**2)))
    if power <= 0:
        return -1.0, np.zeros(3)
    # irfftn counts each half-space coefficient as its conjugate pair, so the cross terms
    # take the overlap without the weights' doubling.
    cross = reference.spectrum * np.conj(b)
    cross *= np.minimum(overlap, 1.0)
    correlation = scipy.fft.irfftn(cross, s=(box,) * 3, workers=settings.fft_workers)
    shift, peak = _shift_peak(correlation * box**3, settings.max_shift_voxels)
    return peak / math.sqrt(power), shift


def align_prepared(reference: Prepared, moving: Prepared,
                   settings: AlignSettings = AlignSettings()) -> Alignment:
    """Align a prepared moving volume onto a prepared reference over all of SO(3).

    Returns the :class:`Alignment` with transform(moving, rotation, shift) ≈ reference.
    """
    if reference.box != moving.box:
        raise TomosiftError(f"volumes differ in size: {reference.box} and {moving.box}")
    peaks = _rotation_peaks(rotational_scores(reference, moving, settings), settings)
    if len(peaks) > 1 and reference.coarse is not None and moving.coarse is not None:
        # Screening: the peaks differ by >= peak_separation_deg, which the low shells tell
        # apart; only the winner's shift and score need the full box.
        reach = settings.max_shift_voxels * reference.coarse.box / reference.box
        screened = [screen_rotation(reference.coarse, moving.coarse, rotation, reach)
                    for rotation in peaks]
        peaks = [peaks[int(np.argmax(screened))]]
    best = (-math.inf, np.eye(3), np.zeros(3))
    for rotation in peaks:
        score, shift = score_rotation(reference, moving, rotation, settings)
        if score > best[0]:
            best = (score, rotation, shift)
    score, rotation, shift = best
    return Alignment(rotation=rotation, shift_voxels=shift, score=float(score))


def align(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray | None,
          moving_mask: np.ndarray | None, settings: AlignSettings = AlignSettings()
          ) -> Alignment:
    """Align ``moving`` onto ``reference`` over all rotations and shifts.

    Args:
        reference, moving: (n, n, n) volumes indexed [z, y, x].
        reference_mask, moving_mask: their rfftn-layout 0/1 wedge masks
            (:func:`tomosift.discovery.wedge.wedge_mask`), each in its own volume's frame;
            None = fully observed.
        settings: search settings.

    Returns:
        :class:`Alignment` (R, s, score) with transform(moving, R, s) ≈ reference.
    """
    return align_prepared(prepare(reference, reference_mask, settings),
                          prepare(moving, moving_mask, settings), settings)
