"""Rule import_particles: a RELION particles STAR file (3D subtomograms or 2D stacks, or an
optimisation set) or MRC folder as a tomosift dataset."""

from tomosift.logs import log_to_file
from tomosift.tomograms.imports import import_particles

log = log_to_file(snakemake.log[0])
params = snakemake.params
summary = import_particles(snakemake.input.source, snakemake.output[0],
                           tilt_max_deg=params.tilt_max_deg, polarity=params.polarity,
                           seed=params.seed, dtype=params.dtype, progress=False,
                           tomograms=snakemake.input.tomograms or None)
log.info("%s: %s", snakemake.output[0], summary)
