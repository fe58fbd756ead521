"""Table 1 grid points on the CPU: 23 classes, one SNR (or dose) and tilt range, every method.

The structures and imaging of a workflow config (default ``config/benchmark22.yaml``: the 22
complexes plus the empty class, the paper's imaging; ``config/realistic.yaml`` for the
realistic mode with ``--dose``), ``--per-class`` subtomograms per class, a 50/50 split; the
CNNs trained with the workflow's default recipe (SGD Nesterov 0.9, lr 0.01, decay 1e-6,
batch 64) for ``--epochs``; the RIF-SVM with C and gamma cross-validated on the train split.
Prints the dataset's measured SNR, each method's test accuracy and times; resumable (a
finished dataset or model is reused, a killed training resumes from its last epoch).

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps \\
        python benchmarks/table1_small.py --per-class 1000 --epochs 20 --snr 0.1 \\
            --methods rif-svm dsrf3d --input-binning 2 --out results/benchmarks/table1_paper
    ... --config config/realistic.yaml --dose 60 --out results/benchmarks/table1_realistic
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py

from tomosift.classify.predict import evaluate
from tomosift.classify.train import method_settings, train_method
from tomosift.config import load_config
from tomosift.datasets import (
    grid_point_tag,
    join_shards,
    plan_from_params,
    simulate_shard,
    simulation_params,
)
from tomosift.density import DensitySettings, make_density
from tomosift.io import write_text
from tomosift.simulate.tomography import SimulationSettings
from tomosift.structures import find_local_structure, parse_structure_entries, search_dirs

REPO = Path(__file__).resolve().parents[1]
PAPER = {"inception3d": 0.851, "dsrf3d": 0.891, "rif-svm": 0.762}  # SNR 0.1, ±60°


def _simulate(job) -> str:
    maps, params, start, stop, path = job
    settings = SimulationSettings.from_config(params, params["tilt_max_deg"])
    simulate_shard(maps, plan_from_params(params), settings, start, stop, path, progress=False)
    return path


def make_dataset(config: dict, level: float, tilt: float, per_class: int, out: Path,
                 jobs: int) -> Path:
    """Simulate one grid point (in ``jobs`` parallel shards) unless it exists."""
    specs = parse_structure_entries(config["structures"])
    tag = grid_point_tag(config["simulation"]["noise_model"], level, tilt)
    data = out / f"{tag}.h5"
    if data.exists():
        return data
    started = time.perf_counter()
    maps = []
    for spec in specs:
        path = find_local_structure(spec.source, search_dirs(), None)
        settings = DensitySettings(assembly=spec.assembly or config["density"]["assembly"])
        maps.append(make_density(path, settings)[0])
    config = {**config, "simulation": {**config["simulation"], "per_class": per_class}}
    params = simulation_params(config, [s.name for s in specs], level, tilt)
    plan = plan_from_params(params)
    ranges = plan.shard_ranges(-(-plan.n_particles // jobs))
    shard_jobs = [(maps, params, a, b, out / f"{tag}_shards" / f"shard-{i:05d}.h5")
                  for i, (a, b) in enumerate(ranges)]
    with ProcessPoolExecutor(jobs) as pool:
        shards = list(pool.map(_simulate, shard_jobs))
    join_shards(shards, data)
    with h5py.File(data) as h5:
        measured = h5.attrs["measured_snr_mean"]
    print(f"dataset {data.name}: {plan.n_particles} subtomograms, measured SNR {measured:.4g}, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "config/benchmark22.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/table1_small"))
    parser.add_argument("--methods", nargs="+",
                        default=["rif-svm", "inception3d", "dsrf3d", "resnet3d"])
    parser.add_argument("--per-class", type=int, default=100)
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--snr", type=float, help="target SNR (the config's noise model: snr)")
    level.add_argument("--dose", type=float, help="dose in e/Å² (the config's noise model: dose)")
    parser.add_argument("--tilt-max-deg", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="parallel simulation processes")
    parser.add_argument("--input-binning", type=int, default=1,
                        help="Fourier-bin subtomograms by this factor before the CNNs")
    args = parser.parse_args()
    config = load_config(args.config, REPO / "workflow/schemas/config.schema.yaml")
    noise_model = config["simulation"]["noise_model"]
    if (args.dose is not None) != (noise_model == "dose"):
        parser.error(f"{args.config} uses the {noise_model} noise model: give "
                     f"{'--dose' if noise_model == 'dose' else '--snr'}")
    level_value = args.dose if args.dose is not None else (args.snr or 0.1)
    classification = {**config["classification"], "epochs": args.epochs}
    if args.input_binning != 1:
        classification["models"] = {
            name: {**classification["models"].get(name, {}), "input_binning": args.input_binning}
            for name in ("inception3d", "dsrf3d", "resnet3d")}
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_dataset(config, level_value, args.tilt_max_deg, args.per_class, args.out,
                        args.jobs)
    grid_point = data.stem
    print(f"machine: {platform.machine()}, {platform.processor()}")
    rows = []
    for method in args.methods:
        binned = args.input_binning != 1 and method != "rif-svm"
        name = f"{grid_point}_{method}" + (f"_bin{args.input_binning}" if binned else "")
        model = args.out / f"{name}.pt"
        started = time.perf_counter()
        if not model.exists():
            train_method(method, data, model, method_settings(classification, method),
                         seed=config["seed"], threads=args.threads)
        wall = time.perf_counter() - started
        metrics = evaluate(model, data, "test", threads=args.threads)
        write_text(args.out / f"{name}.json", json.dumps(metrics, indent=1))
        rows.append((method, metrics, wall))
        print(f"{method:12s} test accuracy {metrics['accuracy']:.3f}  "
              f"train {metrics['train_seconds_per_subtomogram_per_epoch']:.4f} s/subtomo/epoch  "
              f"inference {metrics['inference_seconds_per_subtomogram']:.4f} s/subtomo  "
              f"wall {wall:.0f} s", flush=True)
    print("\nmethod        accuracy  (paper at SNR 0.1, ±60°, 23 x 1000, 20 epochs)")
    for method, metrics, _ in rows:
        paper = PAPER.get(method, float("nan"))
        print(f"{method:12s}  {metrics['accuracy']:.3f}     ({paper:.3f})")


if __name__ == "__main__":
    main()
