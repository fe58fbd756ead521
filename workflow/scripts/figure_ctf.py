"""Rule figure_ctf: power spectrum of a clean projection with the predicted CTF zeros."""

from tomosift.figures import ctf_figure
from tomosift.io import read_mrc
from tomosift.logs import log_to_file
from tomosift.simulate import SimulationSettings

log = log_to_file(snakemake.log[0])
density, _ = read_mrc(snakemake.input.density)
ctf_figure(density, SimulationSettings.from_config(snakemake.params.imaging, 60.0),
           snakemake.output[0])
