"""Noise as the detector records it: a fixed electron dose, the same for every particle.

The paper calibrates the noise of each particle to a target SNR, so a small complex gets as
clean a subtomogram as a large one. On a microscope the noise is set by the dose: every
particle of a tilt series is recorded with the same number of electrons per pixel, and the SNR
follows from how strongly each particle scatters. This module turns a dose into noise levels
and a density map into image contrast (weak-phase approximation):

* phase shift ``phi = sigma_e * V * t``: the interaction constant ``sigma_e`` (relativistic,
  0.00653 rad / (V nm) at 300 kV) times the projected potential; a voxel full of protein has the
  potential of protein, :data:`PROTEIN_POTENTIAL_V` (about 7 V), and tomosift's maps give such a
  voxel the plateau density of :data:`tomosift.density.PLATEAU_DENSITY_DA_PER_NM3`, so
  ``phi = sigma_e * V_protein / plateau * (projected density in Da/nm²)``;
* image contrast (intensity / mean - 1) ``= 2 phi`` filtered by the CTF (which holds the
  amplitude contrast), then by the detector MTF;
* shot noise: a pixel of ``a²`` Å² receives ``D_t = D / T * a² * exp(-t_ice / (lambda_in cos
  theta))`` electrons at each of the T tilts (dose D in e/Å² over the series, split evenly;
  the ice's inelastic losses removed by the energy filter), so the contrast noise has standard
  deviation ``1 / sqrt(D_t)``. This is the Gaussian limit of the Poisson count, accurate when
  each pixel gets many electrons (at 0.92 nm pixels, 100 e/Å² over 61 tilts is 139 electrons
  per pixel and tilt; the Poisson skewness 1 / sqrt(139) = 0.08 is ignored). The noise is
  added after the CTF and filtered by the MTF, like the signal.
"""

from __future__ import annotations

import numpy as np

from tomosift.density import PLATEAU_DENSITY_DA_PER_NM3
from tomosift.errors import TomosiftError
from tomosift.simulate.ctf import ELECTRON_REST_ENERGY_KEV, electron_wavelength_nm
from tomosift.simulate.specimen import Ice

#: Mean inner potential of protein, volts (about 7 V; e.g. 7.0 V computed for 1FA2).
PROTEIN_POTENTIAL_V = 7.0
ANGSTROM_PER_NM = 10.0


def interaction_constant_rad_per_v_nm(voltage_kv: float) -> float:
    """sigma_e = 2 pi / (lambda V) * (m c² + e V) / (2 m c² + e V), in rad / (V nm)."""
    wavelength_nm = electron_wavelength_nm(voltage_kv)
    rest = ELECTRON_REST_ENERGY_KEV
    return float(2 * np.pi / (wavelength_nm * voltage_kv * 1e3)
                 * (rest + voltage_kv) / (2 * rest + voltage_kv))


def contrast_per_voxel_sum(voltage_kv: float, voxel_size_nm: float) -> float:
    """Image contrast per unit of a projection summed over voxels (Da/nm³ per voxel column),
    before the CTF: ``2 sigma_e V_protein / plateau * voxel_size_nm``."""
    phase_per_da_nm2 = (interaction_constant_rad_per_v_nm(voltage_kv) * PROTEIN_POTENTIAL_V
                        / PLATEAU_DENSITY_DA_PER_NM3)
    return 2.0 * phase_per_da_nm2 * voxel_size_nm


def electrons_per_pixel(dose_e_per_a2: float, tilt_angles_deg: np.ndarray,
                        voxel_size_nm: float, ice: Ice) -> np.ndarray:
    """(T,) electrons per pixel recorded at each tilt (dose split evenly over the tilts)."""
    if dose_e_per_a2 <= 0:
        raise TomosiftError(f"the dose must be > 0 e/Å², got {dose_e_per_a2:g}")
    angles = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64))
    pixel_area_a2 = (voxel_size_nm * ANGSTROM_PER_NM) ** 2
    path_nm = ice.thickness_nm / np.cos(angles)
    transmitted = np.exp(-path_nm / ice.inelastic_mfp_nm)
    return dose_e_per_a2 / len(angles) * pixel_area_a2 * transmitted


def tilt_noise_sigma(dose_e_per_a2: float, tilt_angles_deg: np.ndarray, voxel_size_nm: float,
                     ice: Ice) -> np.ndarray:
    """(T,) standard deviation of the contrast noise of one pixel at each tilt."""
    return 1.0 / np.sqrt(electrons_per_pixel(dose_e_per_a2, tilt_angles_deg, voxel_size_nm,
                                             ice))
