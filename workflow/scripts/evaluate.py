"""Rule evaluate: test accuracy, confusion matrix and timings of one model."""

import json

from tomosift.io import write_text
from tomosift.logs import log_to_file
from tomosift.plots import confusion_matrix
from tomosift.train import evaluate

log = log_to_file(snakemake.log[0])
metrics = evaluate(snakemake.input.model, snakemake.input.data, "test", snakemake.params.device)
write_text(snakemake.output.metrics, json.dumps(metrics, indent=1))
title = (f"{metrics['method']}, SNR {metrics['snr']:g}, ±{metrics['tilt_max_deg']:g}°: "
         f"accuracy {metrics['accuracy']:.3f}")
confusion_matrix(metrics["confusion_matrix"], metrics["class_names"], title,
                 snakemake.output.confusion)
log.info("%s", title)
