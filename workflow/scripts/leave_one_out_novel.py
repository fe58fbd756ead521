"""Rule loo_novel_cluster: classify one of a fold's most novel-looking clusters, once for
every class of the fold (the search without the oracle)."""

from tomosift.classify.devices import limited_threads
from tomosift.discovery.folds import fold_classes
from tomosift.discovery.leave_one_out import RecoverySettings, classify_novel_cluster
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
fold = int(snakemake.wildcards.fold)
rank = int(snakemake.wildcards.rank)
with limited_threads(snakemake.threads):
    record = classify_novel_cluster(
        snakemake.input.data,
        snakemake.input.features,
        snakemake.input.clusters,
        fold_classes(snakemake.input.folds, fold),
        rank,
        snakemake.params.out_dir,
        RecoverySettings(**snakemake.params.settings, workers=snakemake.threads),
    )
log.info("fold %d, %s features, novelty rank %d: cluster %s (%d members, novelty %.3g)",
         fold, snakemake.wildcards.features, rank, record["cluster"], record["size"],
         record["novelty"])
