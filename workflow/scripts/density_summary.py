"""Rule density_summary: the summary table and the montage of central slices."""

from tomosift.density import write_summary_table
from tomosift.io import read_mrc
from tomosift.logs import log_to_file
from tomosift.plots import density_montage

log = log_to_file(snakemake.log[0])
rows = write_summary_table(snakemake.input.stats, snakemake.output.table)
volumes = [read_mrc(path)[0] for path in snakemake.input.maps]
density_montage([row["name"] for row in rows], volumes, snakemake.params.voxel_size_nm,
                snakemake.output.montage)
log.info("summarised %d structures", len(rows))
