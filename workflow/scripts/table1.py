"""Rule table1: every test accuracy in the paper's Table 1 layout, beside the paper's."""

from tomosift.logs import log_to_file
from tomosift.table1 import collect_metrics, plot_heatmap, render_html, write_table

log = log_to_file(snakemake.log[0])
frame = collect_metrics(snakemake.input.metrics)
write_table(frame, snakemake.output.table)
render_html(frame, snakemake.output.html)
plot_heatmap(frame, snakemake.output.heatmap)
log.info("\n%s", frame.to_string())
