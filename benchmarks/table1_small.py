"""Reduced Table 1 on the CPU: 23 classes x 100, SNR 0.1, ±60°, 10 epochs, every method.

The 22 complexes of config/benchmark22.yaml plus the empty class; a 50/50 split; the CNNs
trained with the workflow's default recipe (SGD Nesterov 0.9, lr 0.01, decay 1e-6, batch 64)
for 10 epochs; the RIF-SVM with C and gamma cross-validated on the train split. Prints the
test accuracy and the times of each method; resumable (finished models are reused, a killed
training resumes from its last epoch). About an hour on 2 cores.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps \\
        python benchmarks/table1_small.py --out results/benchmarks/table1_small
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from tomosift.config import load_config
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.density import DensitySettings, make_density
from tomosift.io import write_text
from tomosift.simulate.tomography import SimulationSettings
from tomosift.structures import find_local_structure, parse_structure_entries, search_dirs
from tomosift.train import evaluate, train_method

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/table1_small"))
    parser.add_argument("--methods", nargs="+",
                        default=["rif-svm", "inception3d", "dsrf3d", "resnet3d"])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--tilt-max-deg", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-binning", type=int, default=1,
                        help="Fourier-bin subtomograms by this factor before the CNNs")
    args = parser.parse_args()
    config = load_config(REPO / "config/benchmark22.yaml",
                         REPO / "workflow/schemas/config.schema.yaml")
    classification = {**config["classification"], "epochs": args.epochs, "threads": 2}
    if args.input_binning != 1:
        classification["models"] = {
            name: {**classification["models"].get(name, {}), "input_binning": args.input_binning}
            for name in ("inception3d", "dsrf3d", "resnet3d")}
    args.out.mkdir(parents=True, exist_ok=True)
    grid_point = f"snr{args.snr:g}_tilt{args.tilt_max_deg:g}"
    data = args.out / f"{grid_point}.h5"
    if not data.exists():
        started = time.perf_counter()
        specs = parse_structure_entries(config["structures"])
        maps = []
        for spec in specs:
            path = find_local_structure(spec.source, search_dirs(), None)
            settings = DensitySettings(assembly=spec.assembly or "first")
            maps.append(make_density(path, settings)[0])
        plan = DatasetPlan(tuple(s.name for s in specs), per_class=args.per_class,
                           snr=args.snr, seed=config["seed"])
        simulate_shard(maps, plan, SimulationSettings(tilt_max_deg=args.tilt_max_deg), 0,
                       plan.n_particles, data)
        print(f"dataset: {plan.n_particles} subtomograms, {time.perf_counter() - started:.0f} s")
    print(f"machine: {platform.machine()}, {platform.processor()}")
    rows = []
    for method in args.methods:
        binned = args.input_binning != 1 and method != "rif-svm"
        name = f"{grid_point}_{method}" + (f"_bin{args.input_binning}" if binned else "")
        model = args.out / f"{name}.pt"
        started = time.perf_counter()
        if not model.exists():
            train_method(method, data, model, classification, seed=config["seed"])
        wall = time.perf_counter() - started
        metrics = evaluate(model, data, "test")
        write_text(args.out / f"{name}.json", json.dumps(metrics, indent=1))
        rows.append((method, metrics, wall))
        print(f"{method:12s} test accuracy {metrics['accuracy']:.3f}  "
              f"train {metrics['train_seconds_per_subtomogram_per_epoch']:.4f} s/subtomo/epoch  "
              f"inference {metrics['inference_seconds_per_subtomogram']:.4f} s/subtomo  "
              f"wall {wall:.0f} s", flush=True)
    print("\nmethod        accuracy  (paper, 23 x 1000, 20 epochs)")
    paper = {"inception3d": 0.851, "dsrf3d": 0.891, "rif-svm": 0.762}
    for method, metrics, _ in rows:
        reference = paper.get(method, float("nan"))
        print(f"{method:12s}  {metrics['accuracy']:.3f}     ({reference:.3f})")


if __name__ == "__main__":
    main()
