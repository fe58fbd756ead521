"""CNN training on the CPU: speed and test accuracy of recipe variants, measured in one run.

Every variant trains the same network on the same train split (the classes given with
``--classes``, the rest excluded) from the same seed, one after the other, so that their
ratios compare like with like. Printed per variant: the mean seconds per subtomogram per epoch
(wall, all epochs, reading and binning included), the whole training's wall seconds, and the
test accuracy on the same classes' test split.

A variant is ``name:field=value,field=value`` where each field is one of
:class:`tomosift.recipe.TrainingSettings`' (``epochs=10``, ``batch_size=128``,
``cache_volumes=false`` ...); the first variant is the reference of the ratios.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps \\
        python benchmarks/train_speed.py --data results/datasets/dose80_tilt60.h5 \\
            --classes 1bxn 1qvr 1s3x 1u6g 3cf3 3gl1 3h84 4v1w empty \\
            --variant "before:cache_volumes=false" --variant "cached:cache_volumes=true"
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from tomosift.classify.devices import choose_device, limited_threads
from tomosift.classify.inputs import read_split, read_volumes
from tomosift.classify.modelfile import load_model
from tomosift.classify.predict import restore_cnn
from tomosift.classify.train import train_cnn
from tomosift.datasets import class_names_of, open_dataset
from tomosift.recipe import TrainingSettings

try:
    from machine import machine_line
except ImportError:  # run as a module
    from benchmarks.machine import machine_line


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,...`` as (name, overrides) with values typed like the field."""
    name, _, body = text.partition(":")
    kinds = {f.name: f.type for f in fields(TrainingSettings)}
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in kinds:
            raise SystemExit(f"variant {name}: no training setting '{key}'")
        lowered = value.lower()
        if lowered in ("true", "false"):
            overrides[key] = lowered == "true"
        elif lowered in ("none", "null"):
            overrides[key] = None
        else:
            try:
                overrides[key] = int(value)
            except ValueError:
                try:
                    overrides[key] = float(value)
                except ValueError:
                    overrides[key] = value
    return name, overrides


def test_accuracy(model_path: Path, data_path: Path, excluded: tuple[str, ...],
                  threads: int) -> float:
    """Accuracy of a model on the test split of the classes it was trained on."""
    model_file = load_model(model_path)
    data = read_split(data_path, "test", excluded)
    settings = model_file["settings"]
    correct = 0
    with limited_threads(threads), open_dataset(data_path) as h5:
        model = restore_cnn(model_file, choose_device("cpu"))
        for start in range(0, len(data.indices), 64):
            rows = slice(start, start + 64)
            volumes = read_volumes(h5, data.indices[rows], settings["normalise"],
                                   settings.get("input_binning", 1))
            with torch.inference_mode():
                predicted = model(torch.from_numpy(volumes).unsqueeze(1)).argmax(1).numpy()
            correct += int(np.sum(predicted == data.labels[rows]))
    return correct / len(data.indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classes", nargs="+", required=True, help="classes trained on")
    parser.add_argument("--architecture", default="dsrf3d")
    parser.add_argument("--input-binning", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/train_speed"))
    args = parser.parse_args()

    with open_dataset(args.data) as h5:
        names = class_names_of(h5)
    missing = sorted(set(args.classes) - set(names))
    if missing:
        raise SystemExit(f"{args.data}: no class {', '.join(missing)}")
    excluded = tuple(n for n in names if n not in set(args.classes))
    base = TrainingSettings(architecture=args.architecture, epochs=args.epochs,
                            input_binning=args.input_binning, threads=args.threads,
                            device="cpu", exclude_classes=excluded)
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"data {args.data}, {len(args.classes)} classes, {args.architecture} binned "
          f"{args.input_binning}, {args.threads} threads")
    rows = []
    for text in args.variant:
        name, overrides = parse_variant(text)
        settings = replace(base, **overrides)
        model_path = args.out / f"{name}.pt"
        started = time.perf_counter()
        history = train_cnn(args.data, settings, model_path, progress=False)
        wall = time.perf_counter() - started
        per_epoch = float(np.mean([r.seconds_per_subtomogram for r in history]))
        accuracy = test_accuracy(model_path, args.data, excluded, args.threads)
        rows.append({"variant": name, "overrides": overrides, "epochs": len(history),
                     "seconds_per_subtomogram_per_epoch": per_epoch, "train_wall_s": wall,
                     "test_accuracy": accuracy})
        print(json.dumps(rows[-1]), flush=True)
    reference = rows[0]
    print("\n| variant | epochs | s/subtomogram/epoch | ratio | training wall s | ratio | "
          "test accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        speed = reference["seconds_per_subtomogram_per_epoch"] / row[
            "seconds_per_subtomogram_per_epoch"]
        total = reference["train_wall_s"] / row["train_wall_s"]
        print(f"| {row['variant']} | {row['epochs']} | "
              f"{row['seconds_per_subtomogram_per_epoch']:.5f} | {speed:.2f}x | "
              f"{row['train_wall_s']:.0f} | {total:.2f}x | {row['test_accuracy']:.3f} |")
    (args.out / "train_speed.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
