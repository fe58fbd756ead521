"""Simulation of cryo-electron subtomograms: CTF/MTF, tilt series, reconstruction, poses."""

from tomosift.simulate.ctf import Optics
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum

__all__ = ["Optics", "SimulationSettings", "TiltSeriesGeometry", "padded_spectrum"]
