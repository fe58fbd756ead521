"""Rule extract: the subtomograms at one tomogram's picks, as a tomosift dataset."""

from tomosift.logs import log_to_file
from tomosift.tomograms.extract import extract_subtomograms

log = log_to_file(snakemake.log[0])
params = snakemake.params
summary = extract_subtomograms(
    snakemake.input.tomogram, snakemake.input.picks, snakemake.output[0],
    box_voxels=params.box_voxels, voxel_size_nm=params.voxel_size_nm,
    smooth_sigma_nm=params.smooth_sigma_nm, truth_path=snakemake.input.get("truth") or None,
    match_tolerance_voxels=params.tolerance_voxels, tilt_max_deg=params.tilt_max_deg,
    polarity=params.polarity, seed=params.seed, dtype=params.dtype, progress=False,
)
log.info("%s: %s", snakemake.output[0], summary)
