"""Rule train: one classifier on the train split of one dataset."""

from tomosift.logs import log_to_file
from tomosift.train import train_method

log = log_to_file(snakemake.log[0])
result = train_method(
    snakemake.wildcards.method,
    snakemake.input.data,
    snakemake.output[0],
    snakemake.params.classification,
    seed=snakemake.params.seed,
    checkpoint_path=snakemake.params.checkpoint,
)
log.info("trained %s: %s", snakemake.wildcards.method, result)
