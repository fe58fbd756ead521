"""Rule download_structure: fetch an mmCIF entry from RCSB into the structure cache."""

from pathlib import Path

from tomosift.logs import log_to_file
from tomosift.structures import pdb_mirror_dir, resolve_structure, search_dirs

log = log_to_file(snakemake.log[0])
path = resolve_structure(
    snakemake.wildcards.pdb_id,
    search_dirs(snakemake.params.dirs),
    pdb_mirror_dir(snakemake.params.mirror),
    snakemake.params.url,
    Path(snakemake.output[0]).parent,
    snakemake.params.timeout_s,
)
log.info("structure %s: %s", snakemake.wildcards.pdb_id, path)
