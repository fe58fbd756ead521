"""Rule evaluate: test accuracy, confusion matrix and timings of one model."""

import json

from tomosift.classify.predict import evaluate
from tomosift.io import write_text
from tomosift.logs import log_to_file
from tomosift.plots import confusion_matrix
from tomosift.table1 import grid_point_label

log = log_to_file(snakemake.log[0])
metrics = evaluate(snakemake.input.model, snakemake.input.data, "test",
                   device=snakemake.resources.device, threads=snakemake.threads)
write_text(snakemake.output.metrics, json.dumps(metrics, indent=1))
title = (f"{metrics['method']}, {grid_point_label(metrics)}, ±{metrics['tilt_max_deg']:g}°: "
         f"accuracy {metrics['accuracy']:.3f}")
confusion_matrix(metrics["confusion_matrix"], metrics["class_names"], title,
                 snakemake.output.confusion)
log.info("%s", title)
