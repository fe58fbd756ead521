"""Rules loo_cnn_features / loo_free_features: feature vectors of every particle of a dataset
(a CNN's layers in one pass, one file per layer, in the order of params.layers)."""

from tomosift.discovery.features import cnn_layer_features, compute_features, write_features
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
threads, device = snakemake.threads, snakemake.resources.get("device", "auto")
if snakemake.params.source == "cnn":
    layers = list(snakemake.params.layers)
    by_layer = cnn_layer_features(snakemake.input.model, snakemake.input.data, layers,
                                  split="all", threads=threads, device=device)
    outputs = dict(zip(layers, snakemake.output, strict=True))
else:
    by_layer = {"features": compute_features(snakemake.params.source, snakemake.input.data,
                                             split="all", threads=threads, device=device)}
    outputs = {"features": snakemake.output[0]}
for layer, feature_set in by_layer.items():
    write_features(outputs[layer], feature_set)
    log.info("%s: %d x %d features", outputs[layer], *feature_set.features.shape)
