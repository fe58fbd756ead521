"""Rule density: one structure -> density map (MRC) and its summary row (JSON)."""

import json

from tomosift.density import DensitySettings, make_density
from tomosift.io import write_mrc, write_text
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
settings = DensitySettings(**snakemake.params.settings)
volume, row = make_density(
    snakemake.input.structure, settings, name=snakemake.wildcards.name,
    source=snakemake.params.source,
)
write_mrc(snakemake.output.mrc, volume, settings.voxel_size_nm)
write_text(snakemake.output.stats, json.dumps(row.as_row(), indent=1))
log.info("%s: %s", row.name, row.description)
