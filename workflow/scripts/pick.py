"""Rule pick: difference-of-Gaussian picks of one tomogram (a RELION 5 STAR file), after a CTF
correction when the defocus is known (config pick.ctf_correction), less the picks that the
missing-wedge side lobes of stronger ones explain (pick.wedge_suppression,
subdivide.tilt_max_deg)."""

from tomosift.errors import TomosiftError
from tomosift.logs import log_to_file
from tomosift.tomograms.pick import (
    PickSettings,
    pick_tomogram,
    resolve_correction,
    tomogram_optics,
)

log = log_to_file(snakemake.log[0])
chosen = {key: value for key, value in snakemake.params.settings.items() if value is not None}
chosen["tilt_max_deg"] = snakemake.params.tilt_max_deg  # the wedge's side lobes
optics, source = tomogram_optics(snakemake.input.tomogram, snakemake.params.defocus_um)
chosen["ctf_correction"] = resolve_correction(chosen.get("ctf_correction", "auto"), optics)
if chosen["ctf_correction"] != "none" and optics is None:
    raise TomosiftError(f"{snakemake.input.tomogram}: ctf_correction "
                        f"{chosen['ctf_correction']} needs a defocus (subdivide.pick.defocus_um "
                        "or the tomogram entry's defocus_um)")
count = pick_tomogram(snakemake.input.tomogram, snakemake.output.picks, PickSettings(**chosen),
                      tomo_name=snakemake.wildcards.tomo, box_voxels=snakemake.params.box_voxels,
                      optics=optics)
log.info("%s: %d picks (CTF correction %s, defocus from %s; wedge side lobes of ±%g° %s)",
         snakemake.output.picks, count, chosen["ctf_correction"], source,
         chosen["tilt_max_deg"], "suppressed" if chosen.get("wedge_suppression", True) else "kept")
