"""The simulator's report figures: paper Fig. 3, the CTF power spectrum, the missing wedge."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tomosift import plots
from tomosift.simulate.ctf import (
    ctf,
    first_zero_per_nm,
    mtf,
    radial_power_spectrum,
)
from tomosift.simulate.realspace import rotate_volume
from tomosift.simulate.tomography import (
    SimulationSettings,
    TiltSeriesGeometry,
)


def snr_tilt_figure(
    name: str,
    density: np.ndarray,
    noise_levels: Sequence[float],
    tilts: Sequence[float],
    settings: SimulationSettings,
    seed: int,
    path: str | os.PathLike,
    noise_model: str = "snr",
) -> None:
    """Fig. 3: one particle (one pose, one noise seed) across the noise x tilt-range grid.

    ``noise_levels`` are SNRs (``noise_model`` snr, the paper's) or doses in e/Å² (dose).
    """
    from tomosift.datasets import DatasetPlan, ParticleSimulator

    def plan(level: float) -> DatasetPlan:
        level_key = "snr" if noise_model == "snr" else "dose_e_per_a2"
        return DatasetPlan((name,), per_class=2, seed=seed, empty_class=False,
                           max_shift_voxels=0.0, **{level_key: float(level)})

    slices = {}
    rotation = None
    for tilt in tilts:
        simulator = ParticleSimulator.prepare([density], plan(noise_levels[0]),
                                              replace(settings, tilt_max_deg=float(tilt)), name)
        for level in noise_levels:
            volume, truth, _ = simulator.with_plan(plan(level)).particle(0, 0)
            slices[(level, tilt)] = volume[:, volume.shape[1] // 2, :]
            rotation = truth["rotations"]
    placed = rotate_volume(density, rotation, np.zeros(3))
    label = "SNR" if noise_model == "snr" else "dose (e/Å²)"
    plots.snr_tilt_grid(name, slices, list(noise_levels), list(tilts),
                        placed[:, placed.shape[1] // 2, :], path, level_label=label)


def ctf_figure(density: np.ndarray, settings: SimulationSettings, path: str | os.PathLike,
               padding: int = 4) -> None:
    """Radial power spectrum of a clean untilted projection with CTF x MTF, zeros marked.

    The projection is zero-padded ``padding`` times for a finer frequency sampling.
    """
    n = settings.box_voxels
    projection = density.sum(axis=0)
    size = n * padding
    padded = np.zeros((size, size))
    low = size // 2 - n // 2
    padded[low : low + n, low : low + n] = projection
    fy = np.fft.fftfreq(size, 1.0 / size)[:, None]
    fx = np.fft.fftfreq(size, 1.0 / size)[None, :]
    radius = np.hypot(fy, fx) / padding  # in units of the native grid
    frequency = radius / (n * settings.voxel_size_nm)
    transfer = ctf(frequency, settings.optics) * mtf(radius / (n / 2), settings.optics)
    filtered = np.fft.ifft2(np.fft.fft2(padded) * transfer).real
    power = radial_power_spectrum(filtered)[: size // 2 + 1]
    shells_per_nm = np.arange(len(power)) / (size * settings.voxel_size_nm)
    zeros = ctf_zeros_per_nm(settings, 0.5 / settings.voxel_size_nm)
    k = np.linspace(0, shells_per_nm[-1], 400)
    curve = ctf(k, settings.optics) * mtf(k * 2 * settings.voxel_size_nm, settings.optics)
    optics = settings.optics
    title = (f"Clean projection, {optics.voltage_kv:g} kV, Cs {optics.cs_mm:g} mm, "
             f"{optics.defocus_um:g} µm underfocus")
    plots.ctf_power_spectrum(shells_per_nm, power, zeros, (k, curve), title, path)


def ctf_zeros_per_nm(settings: SimulationSettings, up_to_per_nm: float) -> list[float]:
    """Zeros of the CTF below ``up_to_per_nm`` (numerically, first one exactly)."""
    k = np.linspace(1e-4, up_to_per_nm, 20000)
    values = ctf(k, settings.optics)
    crossings = np.nonzero(np.diff(np.sign(values)) != 0)[0]
    zeros = [float(k[i] - values[i] * (k[i + 1] - k[i]) / (values[i + 1] - values[i]))
             for i in crossings]
    if zeros:
        zeros[0] = first_zero_per_nm(settings.optics)
    return zeros


def coverage_figure(
    tilts: Sequence[float], settings: SimulationSettings, path: str | os.PathLike
) -> None:
    """Central kx-kz section of the gridding weight for each tilt range: the missing wedge."""
    coverages = {}
    n = settings.box_voxels
    for tilt in tilts:
        geometry = TiltSeriesGeometry(replace(settings, tilt_max_deg=float(tilt)))
        half = geometry.gridding_weight[:, 0, :]  # ky = 0 section, (kz, kx = 0 .. n/2)
        # kx < 0 follows from the symmetry W(-k) = W(k) of the sample set.
        left = half[(-np.arange(n)) % n][:, n // 2 - 1 : 0 : -1]
        section = np.concatenate([left, half], axis=1)  # kx = -(n/2 - 1) .. n/2
        coverages[tilt] = np.fft.fftshift(section, axes=0)
    plots.fourier_coverage(coverages, path)
