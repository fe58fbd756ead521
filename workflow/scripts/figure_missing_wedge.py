"""Rule figure_missing_wedge: sampled Fourier space for each tilt range."""

from tomosift.figures import coverage_figure
from tomosift.logs import log_to_file
from tomosift.simulate import SimulationSettings

log = log_to_file(snakemake.log[0])
tilts = snakemake.params.tilts
settings = SimulationSettings.from_config(snakemake.params.imaging, tilts[0])
coverage_figure(tilts, settings, snakemake.output[0])
