"""Rule simulate_tomogram: a crowded tomogram of the config's structures and its truth STAR."""

from tomosift.io import read_mrc
from tomosift.logs import log_to_file
from tomosift.simulate.cell import TomogramPlan, simulate_tomogram, write_tomogram
from tomosift.simulate.tomography import SimulationSettings

log = log_to_file(snakemake.log[0])
params = snakemake.params.settings
maps = {name: read_mrc(path)[0] for name, path in zip(params["names"], snakemake.input.maps,
                                                                strict=True)}
plan = TomogramPlan(
    size_voxels=params["size_voxels"],
    thickness_voxels=params["thickness_voxels"],
    n_particles=params["n_particles"],
    min_gap_nm=params["min_gap_nm"],
    dose_e_per_a2=params["dose_e_per_a2"],
    seed=params["seed"],
)
settings = SimulationSettings.from_config(params["imaging"], params["tilt_max_deg"])
tomogram = simulate_tomogram(maps, settings, plan, progress=False)
write_tomogram(tomogram, snakemake.output.tomogram, snakemake.output.truth,
               snakemake.wildcards.tomo, box_voxels=params["imaging"]["box_voxels"])
log.info("%s: %d particles of %d classes", snakemake.output.tomogram, len(tomogram.labels),
         len(tomogram.class_names))
