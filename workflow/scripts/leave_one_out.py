"""Rule loo_recover: recover one left-out class from one feature source's clusters (CNN
features: those of the network trained without the class's fold)."""

from pathlib import Path

from tomosift.classify.devices import limited_threads
from tomosift.discovery.folds import fold_classes, fold_of
from tomosift.discovery.leave_one_out import RecoverySettings, run_class
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
name = snakemake.wildcards.name
fold = fold_of(snakemake.input.folds, name)
with limited_threads(snakemake.threads):
    row = run_class(
        snakemake.input.data,
        snakemake.input.features,
        snakemake.input.clusters,
        name,
        snakemake.input.truth,
        snakemake.params.out_dir,
        snakemake.wildcards.features,
        RecoverySettings(**snakemake.params.settings, workers=snakemake.threads),
        fold=fold,
        fold_classes=fold_classes(snakemake.input.folds, fold),
        model_path=snakemake.input.get("model") or None,
        reference_dir=snakemake.params.reference_dir,
        novel_dirs=[Path(path).parent for path in snakemake.input.novel],
    )
log.info("%s (fold %d) with %s features: %.2f nm, reference %.2f nm (%s; strict: %s)",
         row["class"], fold, row["features"], row["resolution_nm"], row["reference_nm"],
         "success" if row["success"] else "not recovered",
         "success" if row["success_strict"] else "no")
