"""Rule picking_summary: the per-tomogram picking scores in one table."""

from pathlib import Path

import pandas as pd

from tomosift.io import write_text
from tomosift.logs import log_to_file

log = log_to_file(snakemake.log[0])
tables = [pd.read_csv(path, sep="\t").assign(tomogram=Path(path).name.removesuffix("_scores.tsv"))
          for path in snakemake.input]
table = pd.concat(tables, ignore_index=True)
table = table[["tomogram", *[c for c in table.columns if c != "tomogram"]]]
write_text(snakemake.output[0], table.to_csv(sep="\t", index=False))
log.info("%s: %d tomograms", snakemake.output[0], len(tables))
