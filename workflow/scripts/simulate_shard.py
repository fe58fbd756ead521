"""Rule simulate_shard: simulate one shard of a (SNR, tilt range) dataset."""

from tomosift.datasets import simulate_shard_from_maps
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
params = snakemake.params.simulation
simulate_shard_from_maps(snakemake.input.maps, params, snakemake.output[0])
log.info("wrote %s", snakemake.output[0])
