"""Rule subdivide_census: how many distinct structures the subsets hold, known or novel."""

from tomosift.discovery.census import CensusSettings
from tomosift.logs import log_to_file
from tomosift.subdivide.census import census, summary_lines

log = log_to_file(snakemake.log[0])
result = census(snakemake.params.subdivision, snakemake.params.out_dir,
                list(snakemake.input.references), CensusSettings(**snakemake.params.settings),
                data_path=snakemake.input.data)
for line in summary_lines(result.table, result.unresolved, result.merged):
    log.info("%s", line)
