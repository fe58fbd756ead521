"""Rule pick_scores: precision and recall of one simulated tomogram's picks, per class, and
per class against the class's mass."""

import json

from tomosift.io import write_text
from tomosift.logs import log_to_file
from tomosift.tomograms.pick import score_mass_files, score_pick_files

log = log_to_file(snakemake.log[0])
table = score_pick_files(snakemake.input.picks, snakemake.input.truth,
                         snakemake.params.tolerance_voxels)
write_text(snakemake.output.scores, table.to_csv(sep="\t", index=False))
log.info("%s:\n%s", snakemake.output.scores, table.to_string(index=False))
masses = {}
for path in snakemake.input.structures:
    with open(path) as handle:
        row = json.load(handle)
    masses[row["name"]] = row["mass_kda"]
by_mass = score_mass_files(snakemake.input.picks, snakemake.input.truth, masses,
                           snakemake.params.tolerance_voxels)
write_text(snakemake.output.by_mass, by_mass.to_csv(sep="\t", index=False))
log.info("%s:\n%s", snakemake.output.by_mass, by_mass.to_string(index=False))
