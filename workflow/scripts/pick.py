"""Rule pick: difference-of-Gaussian picks of one tomogram (a RELION 5 STAR file)."""

from tomosift.logs import log_to_file
from tomosift.tomograms.pick import PickSettings, pick_tomogram

log = log_to_file(snakemake.log[0])
chosen = {key: value for key, value in snakemake.params.settings.items() if value is not None}
count = pick_tomogram(snakemake.input.tomogram, snakemake.output.picks, PickSettings(**chosen),
                      tomo_name=snakemake.wildcards.tomo, box_voxels=snakemake.params.box_voxels)
log.info("%s: %d picks", snakemake.output.picks, count)
