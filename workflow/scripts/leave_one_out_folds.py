"""Checkpoint loo_folds: the left-out classes' folds, balanced by mass (folds.tsv)."""

import json

from tomosift.discovery.folds import fold_table, write_folds
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
masses = {
    name: float(json.loads(open(path).read())["mass_kda"])
    for name, path in zip(snakemake.params.classes, snakemake.input, strict=True)
}
table = fold_table(snakemake.params.classes, masses, snakemake.params.folds)
write_folds(snakemake.output[0], table)
log.info("%d classes in %d folds:\n%s", len(table), table["fold"].nunique(),
         table.to_string(index=False))
