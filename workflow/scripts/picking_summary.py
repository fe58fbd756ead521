"""Rule picking_summary: the per-tomogram picking scores in one table, and recall and precision
per class against mass pooled over the tomograms (table and plot)."""

from pathlib import Path

import pandas as pd

from tomosift.io import write_text
from tomosift.logs import log_to_file
from tomosift.plots import pick_scores_by_mass
from tomosift.tomograms.pick import mass_reaching, pool_mass_tables

log = log_to_file(snakemake.log[0])
tables = [pd.read_csv(path, sep="\t").assign(tomogram=Path(path).name.removesuffix("_scores.tsv"))
          for path in snakemake.input.scores]
table = pd.concat(tables, ignore_index=True)
table = table[["tomogram", *[c for c in table.columns if c != "tomogram"]]]
write_text(snakemake.output.table, table.to_csv(sep="\t", index=False))
log.info("%s: %d tomograms", snakemake.output.table, len(tables))

pooled = pool_mass_tables([pd.read_csv(path, sep="\t", keep_default_na=False,
                                       na_values=["", "NaN", "nan"])
                           for path in snakemake.input.by_mass])
write_text(snakemake.output.by_mass, pooled.to_csv(sep="\t", index=False))
pick_scores_by_mass({"picks": pooled}, snakemake.output.plot,
                    title=f"Picking by mass, {len(tables)} simulated tomograms")
log.info("%s:\n%s\nevery class from %.0f kDa up has recall and precision >= 0.9",
         snakemake.output.by_mass, pooled.to_string(index=False), mass_reaching(pooled))
