"""CTF and MTF against the physics."""

from __future__ import annotations

import numpy as np
import pytest

from tomosift.simulate.ctf import (
    Optics,
    ctf,
    detector_transfer,
    electron_wavelength_nm,
    first_zero_per_nm,
    mtf,
    radial_power_spectrum,
)
from tomosift.simulate.realspace import detector_transfer_grid
from tomosift.simulate.tomography import SimulationSettings

PAPER = Optics()


def test_relativistic_wavelength():
    assert electron_wavelength_nm(300) == pytest.approx(0.0019687, rel=1e-4)
    assert electron_wavelength_nm(200) == pytest.approx(0.0025079, rel=1e-4)
    assert electron_wavelength_nm(100) == pytest.approx(0.0037014, rel=1e-4)


def test_first_zero_near_one_over_sqrt_lambda_defocus():
    simple = 1 / np.sqrt(electron_wavelength_nm(300) * 5000.0)
    assert first_zero_per_nm(PAPER, include_amplitude_contrast=False) == pytest.approx(
        simple, rel=0.01)  # Cs barely moves the first zero at 5 µm
    exact = first_zero_per_nm(PAPER)
    assert abs(ctf(exact, PAPER)) < 1e-6
    assert np.all(ctf(np.linspace(0.001, exact * 0.999, 200), PAPER) < 0)  # first lobe dark


def test_ctf_sign_and_amplitude_contrast():
    assert ctf(0.0, PAPER) == pytest.approx(-0.07)
    assert ctf(0.0, Optics(ctf_enabled=False)) == 1.0


def test_mtf_is_sinc_pi_omega_over_2():
    assert mtf(0.0, PAPER) == pytest.approx(1.0)
    assert mtf(1.0, PAPER) == pytest.approx(2 / np.pi)  # sin(pi/2) / (pi/2) at Nyquist
    assert mtf(0.5, PAPER) == pytest.approx(np.sin(np.pi / 4) / (np.pi / 4))


def test_power_spectrum_minimum_at_predicted_zero():
    # Clean projections of white objects filtered by CTF x MTF: the radially averaged power
    # spectrum has its first minimum where the CTF has its first zero, 1/sqrt(lambda defocus).
    n = 40
    settings = SimulationSettings()
    rng = np.random.default_rng(3)
    transfer = detector_transfer_grid(settings)
    power = np.mean([
        radial_power_spectrum(np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) * transfer,
                                            s=(n, n)))
        for _ in range(40)
    ], axis=0)
    peak = int(np.argmax(power))  # top of the first CTF lobe
    first_minimum = peak + int(np.argmin(power[peak : n // 2]))
    expected_shell = first_zero_per_nm(PAPER) * n * settings.voxel_size_nm
    assert abs(first_minimum - expected_shell) <= 1.0
    assert 1.0 / np.sqrt(electron_wavelength_nm(300) * 5000) * n * 0.92 == pytest.approx(
        expected_shell, abs=0.5)
    # a real minimum: far below the lobes on both sides
    assert power[first_minimum] < 0.2 * power[peak]
    assert power[first_minimum] < 0.2 * power[first_minimum + 3]


def test_detector_transfer_is_radial():
    c1, m1 = detector_transfer(np.array([3]), np.array([4]), 40, 0.92, PAPER)
    c2, m2 = detector_transfer(np.array([5]), np.array([0]), 40, 0.92, PAPER)
    assert c1 == pytest.approx(c2) and m1 == pytest.approx(m2)
