"""Rule subdivide_cluster: gather the shards' features into k-means subsets and their STAR files."""

from tomosift.logs import log_to_file
from tomosift.subdivide import gather_and_cluster

log = log_to_file(snakemake.log[0])
result = gather_and_cluster(
    snakemake.input.features, snakemake.input.data, snakemake.params.out_dir,
    k=snakemake.params.k, seed=snakemake.params.seed,
    embedding_points=snakemake.params.embedding_points, progress=False,
)
log.info("%s:\n%s", snakemake.output.summary, "\n".join(result.summary_lines))
