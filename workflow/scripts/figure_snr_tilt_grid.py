"""Rule figure_snr_tilt_grid: paper Fig. 3 for one structure."""

from tomosift.figures import snr_tilt_figure
from tomosift.io import read_mrc
from tomosift.logs import log_to_file
from tomosift.simulate import SimulationSettings

log = log_to_file(snakemake.log[0])
density, _ = read_mrc(snakemake.input.density)
settings = SimulationSettings.from_config(snakemake.params.imaging, snakemake.params.tilts[0])
snr_tilt_figure(snakemake.wildcards.name, density, snakemake.params.noise_levels,
                snakemake.params.tilts, settings, snakemake.params.seed, snakemake.output[0],
                snakemake.params.noise_model)
