"""Rule train: one classifier on the train split of one dataset."""

from tomosift.classify.train import train_method
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
train_method(
    snakemake.wildcards.method,
    snakemake.input.data,
    snakemake.output[0],
    snakemake.params.settings,
    seed=snakemake.params.seed,
    checkpoint_path=snakemake.params.checkpoint,
    threads=snakemake.threads,
    device=snakemake.resources.device,
)
log.info("trained %s on %s", snakemake.wildcards.method, snakemake.input.data)
