"""Contrast transfer function (CTF) and detector modulation transfer function (MTF).

Sign convention (stated once, used everywhere):

    chi(k) = pi * lambda * defocus * k**2 - (pi / 2) * Cs * lambda**3 * k**4
    CTF(k) = -(sqrt(1 - A**2) * sin(chi) + A * cos(chi))

with ``defocus > 0`` meaning underfocus (the paper's "-5 µm"), ``A`` the amplitude contrast
and ``k`` the spatial frequency in cycles/nm. The Fourier transform of the projected density
(protein positive) is multiplied by CTF(k); since CTF(0) = -A < 0 and the first lobe is
negative, particles come out dark on a light background at low resolution, as in raw
micrographs and as RELION expects its input.

The MTF of the detector is sinc(pi * omega / 2) with omega the fraction of Nyquist
(McMullan et al. 2009); numpy's ``sinc(x)`` is already ``sin(pi x) / (pi x)``, so it is
``np.sinc(omega / 2)``.

The B-factor envelope ``exp(-B k^2 / 4)`` (k in 1/Å, B in Å²) damps the signal's high
frequencies, as beam-induced motion, drift and radiation damage do; B = 0 (the paper) is none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tomosift.errors import TomosiftError

ELECTRON_REST_ENERGY_KEV = 510.99895
# h * c in keV·nm: lambda = hc / sqrt(E * (E + 2 m c^2)) for kinetic energy E.
HC_KEV_NM = 1.239841984


@dataclass(frozen=True)
class Optics:
    """Microscope and detector settings (defaults: the paper's, Section 3.1.1).

    ``defocus_range_um``: (low, high) underfocus range; each particle then draws its own
    defocus uniformly from it (tomosift's realistic mode; None = every particle at
    ``defocus_um``, as the paper). ``b_factor_a2``: the signal envelope's B-factor in Å².
    """

    voltage_kv: float = 300.0
    cs_mm: float = 2.0
    defocus_um: float = 5.0
    amplitude_contrast: float = 0.07
    ctf_enabled: bool = True
    mtf_enabled: bool = True
    defocus_range_um: tuple[float, float] | None = None
    b_factor_a2: float = 0.0

    def __post_init__(self) -> None:
        if self.defocus_range_um is not None:
            low, high = self.defocus_range_um
            if not low <= high:
                raise TomosiftError(f"defocus_range_um must be [low, high] with low <= high, "
                                    f"got [{low:g}, {high:g}]")
        if self.b_factor_a2 < 0:
            raise TomosiftError(f"b_factor_a2 must be >= 0, got {self.b_factor_a2:g}")


def electron_wavelength_nm(voltage_kv: float) -> float:
    """Relativistic electron wavelength in nm (0.001969 nm at 300 kV)."""
    energy = voltage_kv
    return HC_KEV_NM / np.sqrt(energy * (energy + 2 * ELECTRON_REST_ENERGY_KEV))


def ctf(frequency_per_nm: np.ndarray, optics: Optics) -> np.ndarray:
    """CTF at spatial frequencies (cycles/nm), any shape; ones when the CTF is disabled."""
    k = np.asarray(frequency_per_nm, dtype=np.float64)
    if not optics.ctf_enabled:
        return np.ones_like(k)
    wavelength = electron_wavelength_nm(optics.voltage_kv)
    defocus_nm = optics.defocus_um * 1e3
    cs_nm = optics.cs_mm * 1e6
    chi = np.pi * wavelength * defocus_nm * k**2 - 0.5 * np.pi * cs_nm * wavelength**3 * k**4
    a = optics.amplitude_contrast
    return -(np.sqrt(1 - a**2) * np.sin(chi) + a * np.cos(chi))


def mtf(fraction_of_nyquist: np.ndarray, optics: Optics) -> np.ndarray:
    """Detector MTF sinc(pi * omega / 2) at omega = fraction of Nyquist, any shape."""
    omega = np.asarray(fraction_of_nyquist, dtype=np.float64)
    if not optics.mtf_enabled:
        return np.ones_like(omega)
    return np.sinc(omega / 2)


def b_factor_envelope(frequency_per_nm: np.ndarray, b_factor_a2: float) -> np.ndarray:
    """Signal envelope exp(-B k² / 4) at frequencies in cycles/nm (k in 1/Å), any shape."""
    k_per_angstrom = np.asarray(frequency_per_nm, dtype=np.float64) / 10.0
    return np.exp(-b_factor_a2 * k_per_angstrom**2 / 4.0)


def first_zero_per_nm(optics: Optics, include_amplitude_contrast: bool = True) -> float:
    """Frequency (cycles/nm) of the CTF's first zero.

    Without Cs and amplitude contrast it is 1 / sqrt(lambda * defocus); the exact value solves
    chi(k) = pi - atan(A / sqrt(1 - A^2)) with the quartic Cs term included.
    """
    wavelength = electron_wavelength_nm(optics.voltage_kv)
    defocus_nm = optics.defocus_um * 1e3
    cs_nm = optics.cs_mm * 1e6
    a = optics.amplitude_contrast if include_amplitude_contrast else 0.0
    target = np.pi - np.arctan2(a, np.sqrt(1 - a**2))
    # chi(k) = target is a quadratic in s = k^2: (pi/2) Cs l^3 s^2 - pi l d s + target = 0.
    qa, qb, qc = 0.5 * np.pi * cs_nm * wavelength**3, -np.pi * wavelength * defocus_nm, target
    disc = qb**2 - 4 * qa * qc
    s = (-qb - np.sqrt(disc)) / (2 * qa) if qa > 0 else -qc / qb
    return float(np.sqrt(s))


def detector_transfer(
    u_index: np.ndarray, v_index: np.ndarray, box_voxels: int, voxel_size_nm: float,
    optics: Optics,
) -> tuple[np.ndarray, np.ndarray]:
    """CTF and MTF of the detector frequencies (u, v) given as integer DFT indices.

    Returns:
        (ctf, mtf) arrays of the broadcast shape of ``u_index`` and ``v_index``.
    """
    radius = np.hypot(u_index, v_index)
    frequency_per_nm = radius / (box_voxels * voxel_size_nm)
    return ctf(frequency_per_nm, optics), mtf(radius / (box_voxels / 2), optics)


def radial_power_spectrum(image: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of a square 2D image, one value per integer shell.

    Returns:
        (n // 2 + 1,) mean |FFT|² in shells of radius 0 .. n/2 (frequency index units).
    """
    n = image.shape[0]
    power = np.abs(np.fft.fft2(image)) ** 2
    fy = np.fft.fftfreq(n, 1 / n)[:, None]
    fx = np.fft.fftfreq(n, 1 / n)[None, :]
    shell = np.rint(np.hypot(fy, fx)).astype(int).ravel()
    keep = shell <= n // 2
    sums = np.bincount(shell[keep], power.ravel()[keep], minlength=n // 2 + 1)
    counts = np.bincount(shell[keep], minlength=n // 2 + 1)
    return sums / np.maximum(counts, 1)
