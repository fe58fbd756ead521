"""Rule pick_scores: precision and recall of one simulated tomogram's picks, per class."""

from tomosift.io import write_text
from tomosift.logs import log_to_file
from tomosift.tomograms.pick import score_pick_files

log = log_to_file(snakemake.log[0])
table = score_pick_files(snakemake.input.picks, snakemake.input.truth,
                         snakemake.params.tolerance_voxels)
write_text(snakemake.output[0], table.to_csv(sep="\t", index=False))
log.info("%s:\n%s", snakemake.output[0], table.to_string(index=False))
