"""Rule subdivide_features: CNN features of one shard of the joined particles."""

from tomosift.logs import log_to_file
from tomosift.subdivide import shard_features

log = log_to_file(snakemake.log[0])
shard_features(
    snakemake.input.model, snakemake.input.data, snakemake.output[0],
    shard=int(snakemake.wildcards.shard), n_shards=snakemake.params.n_shards,
    batch_size=snakemake.params.batch_size, workers=snakemake.params.workers,
    device=snakemake.resources.get("device", "auto"), threads=snakemake.threads, progress=False,
)
log.info("%s: shard %s of %d", snakemake.output[0], snakemake.wildcards.shard,
         snakemake.params.n_shards)
