"""Rule join_dataset: join the shards of a dataset (virtual dataset) and summarise it."""

from tomosift.datasets import dataset_summary, join_shards
from tomosift.io import write_text
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
join_shards(snakemake.input.shards, snakemake.output.dataset)
write_text(snakemake.output.summary, dataset_summary(snakemake.output.dataset) + "\n")
log.info("joined %d shards into %s", len(snakemake.input.shards), snakemake.output.dataset)
