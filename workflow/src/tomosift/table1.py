"""The paper's Table 1: accuracies per (SNR, tilt range, method), ours beside the paper's."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from tomosift.io import atomic_path, write_text

METHOD_LABELS = {"inception3d": "Inception3D", "dsrf3d": "DSRF3D", "resnet3d": "ResNet3D",
                 "rif-svm": "RIF-SVM"}


def _ordered_methods(frame: pd.DataFrame) -> list[str]:
    """The paper's methods and tomosift's in a fixed order, then named variants by name."""
    present = set(frame["method"])
    return [m for m in METHOD_LABELS if m in present] + sorted(present - set(METHOD_LABELS))


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 in long form: snr, tilt_max_deg, method, accuracy."""
    text = resources.files("tomosift").joinpath("data/paper_table1.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()
            if line and not line.startswith("#")]
    frame = pd.DataFrame(rows[1:], columns=rows[0])
    return frame.astype({"snr": float, "tilt_max_deg": float, "accuracy": float})


def collect_metrics(metric_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per evaluated model: ours and the paper's accuracy, timings, sizes."""
    paper = paper_table1().set_index(["snr", "tilt_max_deg", "method"])["accuracy"]
    rows = []
    for path in metric_paths:
        metrics = json.loads(Path(path).read_text())
        key = (float(metrics["snr"]), float(metrics["tilt_max_deg"]), metrics["method"])
        rows.append({
            "snr": key[0],
            "tilt_max_deg": key[1],
            "method": key[2],
            "accuracy": metrics["accuracy"],
            "paper_accuracy": paper.get(key, float("nan")),
            "n_test": metrics["n_subtomograms"],
            "n_classes": len(metrics["class_names"]),
            "epochs": metrics.get("epochs"),
            "train_s_per_subtomogram_epoch": metrics["train_seconds_per_subtomogram_per_epoch"],
            "inference_s_per_subtomogram": metrics["inference_seconds_per_subtomogram"],
            "device": metrics.get("trained_on_device"),
        })
    frame = pd.DataFrame(rows)
    return frame.sort_values(["tilt_max_deg", "snr", "method"], ascending=[False, False, True],
                             ignore_index=True)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.4g")


def render_html(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """The table laid out like the paper's: rows SNR, columns tilt range x method;
    each cell "ours (paper)", the best of a row and tilt range in bold."""
    tilts = sorted(frame["tilt_max_deg"].unique(), reverse=True)
    methods = _ordered_methods(frame)
    snrs = sorted(frame["snr"].unique(), reverse=True)
    lookup = frame.set_index(["snr", "tilt_max_deg", "method"])
    head_1 = "".join(f'<th colspan="{len(methods)}">±{t:g}°</th>' for t in tilts)
    head_2 = "".join(f"<th>{html.escape(_label(m))}</th>" for _ in tilts for m in methods)
    body = []
    for snr in snrs:
        cells = []
        for tilt in tilts:
            values = {m: lookup["accuracy"].get((snr, tilt, m)) for m in methods}
            best = max((v for v in values.values() if v is not None), default=None)
            for method in methods:
                ours = values[method]
                if ours is None:
                    cells.append("<td>–</td>")
                    continue
                paper = lookup["paper_accuracy"].get((snr, tilt, method))
                text = f"{ours:.3f}" + (f" ({paper:.3f})" if paper == paper else "")
                cells.append(f"<td><b>{text}</b></td>" if ours == best else f"<td>{text}</td>")
        body.append(f"<tr><th>{snr:g}</th>{''.join(cells)}</tr>")
    classes = int(frame["n_classes"].max()) if len(frame) else 0
    n_test = int(frame["n_test"].max()) if len(frame) else 0
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Table 1</title>
<style>table{{border-collapse:collapse;font-family:sans-serif;font-size:13px}}
td,th{{border:1px solid #bbb;padding:3px 7px;text-align:center}}</style></head><body>
<p>Test accuracy of each method, ours with the paper's Table 1 in parentheses (23 classes,
500 test subtomograms per class there; {classes} classes and {n_test} test subtomograms
here). Best of each SNR and tilt range in bold.</p>
<table><tr><th rowspan="2">SNR</th>{head_1}</tr><tr>{head_2}</tr>
{chr(10).join(body)}
</table><p>{html.escape(_settings_line(frame))}</p></body></html>
"""
    write_text(path, page)


def plot_heatmap(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Heat maps of our accuracies and the paper's in the Table 1 layout."""
    import numpy as np

    from tomosift.plots import accuracy_heatmap

    tilts = sorted(frame["tilt_max_deg"].unique(), reverse=True)
    methods = _ordered_methods(frame)
    snrs = sorted(frame["snr"].unique(), reverse=True)
    lookup = frame.set_index(["snr", "tilt_max_deg", "method"])
    ours = np.full((len(snrs), len(tilts) * len(methods)), np.nan)
    paper = np.full_like(ours, np.nan)
    for i, snr in enumerate(snrs):
        for t, tilt in enumerate(tilts):
            for m, method in enumerate(methods):
                if (snr, tilt, method) in lookup.index:
                    ours[i, t * len(methods) + m] = lookup.loc[(snr, tilt, method), "accuracy"]
                    paper[i, t * len(methods) + m] = lookup.loc[(snr, tilt, method),
                                                                "paper_accuracy"]
    columns = [f"±{t:g}° {_label(m)}" for t in tilts for m in methods]
    accuracy_heatmap([f"SNR {s:g}" for s in snrs], columns, ours, paper, path)


def _settings_line(frame: pd.DataFrame) -> str:
    epochs = sorted({int(e) for e in frame["epochs"].dropna() if e})
    return f"CNN epochs: {', '.join(map(str, epochs)) or 'n/a'}."
