"""Rule loo_summary: Table S2, the success counts, Figs. 2, 4 and S1 of the leave-one-out."""

from tomosift.discovery.folds import fold_classes
from tomosift.discovery.leave_one_out import write_views
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
counts = write_views(
    snakemake.input.rows,
    dict(zip(snakemake.params.feature_names, snakemake.input.features, strict=True)),
    dict(zip(snakemake.params.feature_names, snakemake.input.clusters, strict=True)),
    fold_classes(snakemake.input.folds, 1),
    snakemake.output,
    embedding_points=snakemake.params.embedding_points,
    seed=snakemake.params.seed,
    criterion=snakemake.params.criterion,
)
log.info("successes:\n%s", counts.to_string(index=False))
