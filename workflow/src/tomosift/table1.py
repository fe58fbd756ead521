"""The paper's Table 1: accuracies per (SNR, tilt range, method), ours beside the paper's.

Datasets of the paper's noise model are keyed by their target SNR and shown beside the
paper's accuracy; datasets of the detector-noise model (``noise_model: dose``) by their dose,
with the SNR measured on them, and without a paper value (the paper has no such setting).
Beside this run's table the view shows tomosift's recorded runs at the paper's size (23 × 1000,
20 epochs; ``data/recorded_table1.tsv``, measured as in docs/benchmarks.md): the paper's
setting and the realistic preset, so a reduced run can be read against them.
"""

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


def _cell(text: str, best: bool) -> str:
    """A table cell, bold when it is the best of its row."""
    return f"<td><b>{text}</b></td>" if best else f"<td>{text}</td>"


def _packaged_table(name: str) -> pd.DataFrame:
    """A TSV of the package's data folder (``#`` lines are comments), all columns as text."""
    text = resources.files("tomosift").joinpath(f"data/{name}").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return pd.DataFrame(rows[1:], columns=rows[0])


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 in long form: snr, tilt_max_deg, method, accuracy."""
    return _packaged_table("paper_table1.tsv").astype(
        {"snr": float, "tilt_max_deg": float, "accuracy": float})


def recorded_table1() -> pd.DataFrame:
    """tomosift's recorded full-size runs in long form: setting (paper|realistic), noise,
    level, measured_snr, tilt_max_deg, method, architecture, accuracy, per_class, epochs,
    machine, date."""
    return _packaged_table("recorded_table1.tsv").astype(
        {"level": float, "measured_snr": float, "tilt_max_deg": float, "accuracy": float,
         "per_class": int, "epochs": int})


def render_recorded_html(recorded: pd.DataFrame) -> str:
    """One HTML table per setting (the paper's, then realistic): rows noise level, columns
    method; each cell our accuracy, with the paper's in parentheses (paper setting) or the
    measured SNR (realistic)."""
    paper = paper_table1().set_index(["snr", "tilt_max_deg", "method"])["accuracy"]
    parts = []
    for setting, title in (("paper", "the paper's setting"),
                           ("realistic", "the realistic preset (config/realistic.yaml)")):
        rows = recorded[recorded["setting"] == setting].sort_values("level", ascending=False)
        if rows.empty:
            continue
        methods = _ordered_methods(rows)
        head = "".join(f"<th>{html.escape(_label(m))}</th>" for m in methods)
        body = []
        for (level, tilt), group in rows.groupby(["level", "tilt_max_deg"], sort=False):
            by_method = group.set_index("method")
            best = by_method["accuracy"].max()
            cells = []
            for method in methods:
                if method not in by_method.index:
                    cells.append("<td>–</td>")
                    continue
                ours = by_method.loc[method, "accuracy"]
                text = f"{ours:.3f}"
                if setting == "paper":
                    # a named variant beside the paper's model of its architecture
                    architecture = by_method.loc[method, "architecture"]
                    reference = paper.get((level, tilt, architecture))
                    if reference is not None:
                        text += f" ({reference:.3f})"
                cells.append(_cell(text, ours == best))
            first = group.iloc[0]
            label = f"{first['noise']}, ±{tilt:g}°"
            if setting == "realistic":
                label += f" (SNR {first['measured_snr']:.2g} measured)"
            body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
        note = ("in parentheses the paper's value for the same architecture (on 40³ input)."
                if setting == "paper" else
                "one dose per dataset; the SNR is measured on its subtomograms (mean over "
                "the 22 complexes).")
        machines = ", ".join(sorted(set(rows["machine"] + " " + rows["date"])))
        parts.append(f"<h3>tomosift at the paper's size, {html.escape(title)}</h3>\n"
                     f"<table><tr><th>noise</th>{head}</tr>\n{chr(10).join(body)}</table>\n"
                     f"<p>23 classes × {int(rows['per_class'].max())} (50/50 split), CNNs "
                     f"{int(rows['epochs'].max())} epochs on Fourier-binned input; recorded "
                     f"runs ({html.escape(machines)}), not this run; {note} Details in "
                     "docs/benchmarks.md.</p>")
    return "\n".join(parts)


def grid_point_label(metrics: dict) -> str:
    """'SNR 0.1' (the paper's noise model) or 'dose 60 e/Å²' (detector noise)."""
    if metrics.get("noise_model", "snr") == "snr":
        return f"SNR {float(metrics['snr']):g}"
    return f"dose {float(metrics['dose_e_per_a2']):g} e/Å²"


def collect_metrics(metric_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per evaluated model: ours and the paper's accuracy, timings, sizes.

    ``level`` is the grid point's target SNR (the paper's noise model) or its dose (the
    detector's), ``measured_snr`` what the dataset's particles have (mean over the structure
    classes)."""
    paper = paper_table1().set_index(["snr", "tilt_max_deg", "method"])["accuracy"]
    rows = []
    for path in metric_paths:
        metrics = json.loads(Path(path).read_text())
        noise_model = metrics.get("noise_model", "snr")
        level = float(metrics["snr"] if noise_model == "snr" else metrics["dose_e_per_a2"])
        tilt = float(metrics["tilt_max_deg"])
        rows.append({
            "noise_model": noise_model,
            "grid_point": grid_point_label(metrics),
            "level": level,
            "measured_snr": metrics.get("measured_snr"),
            "tilt_max_deg": tilt,
            "method": metrics["method"],
            "accuracy": metrics["accuracy"],
            "paper_accuracy": (paper.get((level, tilt, metrics["method"]), float("nan"))
                               if noise_model == "snr" else float("nan")),
            "n_test": metrics["n_subtomograms"],
            "n_classes": len(metrics["class_names"]),
            "epochs": metrics.get("epochs"),
            "train_s_per_subtomogram_epoch": metrics["train_seconds_per_subtomogram_per_epoch"],
            "inference_s_per_subtomogram": metrics["inference_seconds_per_subtomogram"],
            "device": metrics.get("trained_on_device"),
        })
    frame = pd.DataFrame(rows)
    return frame.sort_values(["tilt_max_deg", "level", "method"], ascending=[False, False, True],
                             ignore_index=True)


def _layout(frame: pd.DataFrame):
    """Rows (levels, least noise first), their labels, tilts, methods and a lookup table."""
    levels = sorted(frame["level"].unique(), reverse=True)
    labels = [frame.loc[frame["level"] == level, "grid_point"].iloc[0] for level in levels]
    tilts = sorted(frame["tilt_max_deg"].unique(), reverse=True)
    return levels, labels, tilts, _ordered_methods(frame), frame.set_index(
        ["level", "tilt_max_deg", "method"])


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.4g")


def render_html(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """The table laid out like the paper's: rows SNR (or dose), columns tilt range x method;
    each cell "ours (paper)" (or, for a dose, "ours" and the measured SNR), the best of a row
    and tilt range in bold."""
    levels, labels, tilts, methods, lookup = _layout(frame)
    head_1 = "".join(f'<th colspan="{len(methods)}">±{t:g}°</th>' for t in tilts)
    head_2 = "".join(f"<th>{html.escape(_label(m))}</th>" for _ in tilts for m in methods)
    body = []
    for level, label in zip(levels, labels, strict=True):
        cells = []
        for tilt in tilts:
            values = {m: lookup["accuracy"].get((level, tilt, m)) for m in methods}
            best = max((v for v in values.values() if v is not None), default=None)
            for method in methods:
                ours = values[method]
                if ours is None:
                    cells.append("<td>–</td>")
                    continue
                paper = lookup["paper_accuracy"].get((level, tilt, method))
                measured = lookup["measured_snr"].get((level, tilt, method))
                text = f"{ours:.3f}"
                if paper == paper:
                    text += f" ({paper:.3f})"
                elif measured is not None and measured == measured:
                    text += f" <small>SNR {measured:.2g}</small>"
                cells.append(_cell(text, ours == best))
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    classes = int(frame["n_classes"].max()) if len(frame) else 0
    n_test = int(frame["n_test"].max()) if len(frame) else 0
    detector = (frame["noise_model"] == "dose").any()
    intro = ("Test accuracy of each method with the detector-noise model: one electron dose "
             "per dataset, so the SNR (measured on each dataset, mean over the structure "
             "classes) depends on the complex; the paper has no such setting"
             if detector else
             "Test accuracy of each method, ours with the paper's Table 1 in parentheses (23 "
             "classes, 500 test subtomograms per class there")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Table 1</title>
<style>table{{border-collapse:collapse;font-family:sans-serif;font-size:13px}}
td,th{{border:1px solid #bbb;padding:3px 7px;text-align:center}}</style></head><body>
<p>{intro}; {classes} classes and {n_test} test subtomograms here). Best of each row and tilt
range in bold.</p>
<table><tr><th rowspan="2">noise</th>{head_1}</tr><tr>{head_2}</tr>
{chr(10).join(body)}
</table><p>{html.escape(_settings_line(frame))}</p>
{render_recorded_html(recorded_table1())}
</body></html>
"""
    write_text(path, page)


def plot_heatmap(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Heat maps of our accuracies and the paper's in the Table 1 layout."""
    import numpy as np

    from tomosift.plots import accuracy_heatmap

    levels, labels, tilts, methods, lookup = _layout(frame)
    ours = np.full((len(levels), len(tilts) * len(methods)), np.nan)
    paper = np.full_like(ours, np.nan)
    for i, level in enumerate(levels):
        for t, tilt in enumerate(tilts):
            for m, method in enumerate(methods):
                if (level, tilt, method) in lookup.index:
                    column = t * len(methods) + m
                    ours[i, column] = lookup.loc[(level, tilt, method), "accuracy"]
                    paper[i, column] = lookup.loc[(level, tilt, method), "paper_accuracy"]
    columns = [f"±{t:g}° {_label(m)}" for t in tilts for m in methods]
    accuracy_heatmap(labels, columns, ours, paper, path)


def _settings_line(frame: pd.DataFrame) -> str:
    epochs = sorted({int(e) for e in frame["epochs"].dropna() if e})
    return f"CNN epochs: {', '.join(map(str, epochs)) or 'n/a'}."
