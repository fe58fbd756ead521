"""Rule subdivide_averages: reference-free averages of the largest subsets and their montage."""

from tomosift.logs import log_to_file
from tomosift.subdivide import cluster_averages

log = log_to_file(snakemake.log[0])
cluster_averages(
    snakemake.input.data, snakemake.input.clusters, snakemake.params.out_dir,
    clusters=snakemake.params.clusters, max_members=snakemake.params.max_members,
    iterations=snakemake.params.iterations, seed=snakemake.params.seed, threads=snakemake.threads,
)
log.info("%s: averages of the %d largest subsets", snakemake.output.montage,
         snakemake.params.clusters)
