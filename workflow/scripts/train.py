"""Rules train / loo_train: one classifier on the train split of one dataset (loo_train:
without every class of its fold, read from folds.tsv)."""

from tomosift.classify.train import train_method
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
settings = dict(snakemake.params.settings)
if snakemake.input.get("folds"):
    from tomosift.discovery.folds import fold_classes

    settings["exclude_classes"] = fold_classes(snakemake.input.folds, snakemake.wildcards.fold)
    log.info("fold %s: without %s", snakemake.wildcards.fold,
             ", ".join(settings["exclude_classes"]))
train_method(
    snakemake.wildcards.method,
    snakemake.input.data,
    snakemake.output[0],
    settings,
    seed=snakemake.params.seed,
    checkpoint_path=snakemake.params.checkpoint,
    threads=snakemake.threads,
    device=snakemake.resources.device,
)
log.info("trained %s on %s", snakemake.wildcards.method, snakemake.input.data)
