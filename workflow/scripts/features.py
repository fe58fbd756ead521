"""Rules loo_cnn_features / loo_free_features: feature vectors of every particle of a dataset."""

from tomosift.discovery.features import compute_features, write_features
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
feature_set = compute_features(
    snakemake.params.source,
    snakemake.input.data,
    snakemake.input.get("model"),
    split="all",
    layer=snakemake.params.layer,
    threads=snakemake.threads,
    device=snakemake.resources.get("device", "auto"),
)
write_features(snakemake.output[0], feature_set)
log.info("%s: %d x %d features", snakemake.output[0], *feature_set.features.shape)
