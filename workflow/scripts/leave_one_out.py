"""Rule loo_recover: recover one left-out class from one feature source's clusters."""

from tomosift.classify.devices import limited_threads
from tomosift.discovery.leave_one_out import RecoverySettings, run_class
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
with limited_threads(snakemake.threads):
    row = run_class(
        snakemake.input.data,
        snakemake.input.features,
        snakemake.input.clusters,
        snakemake.wildcards.name,
        snakemake.input.truth,
        snakemake.params.out_dir,
        snakemake.wildcards.features,
        RecoverySettings(**snakemake.params.settings, workers=snakemake.threads),
    )
log.info("%s with %s features: %.2f nm (%s)", row["class"], row["features"],
         row["resolution_nm"], "success" if row["success"] else "not recovered")
