"""Rules loo_*_clusters: k-means of the test split's features."""

from tomosift.classify.devices import limited_threads
from tomosift.discovery.features import read_features
from tomosift.discovery.leave_one_out import write_test_clusters
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
with limited_threads(snakemake.threads):
    write_test_clusters(snakemake.output[0], read_features(snakemake.input[0]),
                        snakemake.params.k, snakemake.params.seed)
log.info("%s: k = %d", snakemake.output[0], snakemake.params.k)
