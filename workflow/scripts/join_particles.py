"""Rule join_particles: every input's dataset as one dataset (volumes stay in their files)."""

from tomosift.logs import log_to_file
from tomosift.tomograms.joined import join_particle_datasets

log = log_to_file(snakemake.log[0])
count = join_particle_datasets(snakemake.input, snakemake.output[0])
log.info("%s: %d particles from %d inputs", snakemake.output[0], count, len(snakemake.input))
