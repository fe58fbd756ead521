"""Subdivision throughput: features + clustering of N subtomograms read from disk.

The issue's bar: on 2 CPU cores, 40³ subtomograms, Inception3D and the fastest variant,
``tomosift subdivide`` (features + k-means + subsets) of 10⁵ subtomograms: subtomograms/s and
peak RSS, and peak RSS must not grow with N (10⁴ vs 10⁵).

Datasets: a small set is simulated once (``--base-per-class`` per class of four complexes at
SNR ``--snr``) and tiled to N volumes stored as float16 (half the disk: 10⁵ × 40³ × 2 B =
12.8 GB). Models: freshly initialised networks of each variant written in the model-file
format (weights do not change the cost), 23 outputs as in the paper. Each run is a fresh
subprocess; peak RSS is the largest sum over the process and its children (DataLoader
workers), polled every 0.1 s. Per-batch pieces (read, binning + normalisation, forward) are
timed separately so that a GPU projection can be made.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps \\
        python benchmarks/subdivide.py --sizes 10000 100000 --models inception3d-bin2 inception3d
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import psutil
from machine import machine_line

BOX = 40
VOXEL_NM = 0.92
NAMES = ("3hhb", "1bxn", "3gl1", "1qvr")
OUTPUTS = 23

CHILD = """
import json, sys, time
from tomosift.classify.devices import limited_threads
from tomosift.subdivide import gather_and_cluster, shard_features
model, data, out, k, threads, batch, workers = sys.argv[1:8]
started = time.perf_counter()
with limited_threads(int(threads)):
    features = shard_features(model, data, out + "/features.h5", batch_size=int(batch),
                              workers=int(workers), device="cpu", threads=int(threads),
                              progress=False)
    middle = time.perf_counter()
    gather_and_cluster([features], data, out, int(k), embedding_points=2000, progress=False)
ended = time.perf_counter()
print(json.dumps({"features_s": middle - started, "cluster_s": ended - middle}))
"""


def base_dataset(folder: Path, per_class: int, snr: float) -> Path:
    from tomosift.datasets import DatasetPlan, simulate_shard
    from tomosift.density import DensitySettings, make_density
    from tomosift.simulate.tomography import SimulationSettings
    from tomosift.structures import find_in_dirs, search_dirs

    path = folder / "base.h5"
    if path.is_file():
        return path
    grid = DensitySettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM)
    maps = [make_density(find_in_dirs(name, search_dirs()), grid)[0] for name in NAMES]
    plan = DatasetPlan(NAMES, per_class=per_class, snr=snr, volume_dtype="float16")
    simulate_shard(maps, plan, SimulationSettings(box_voxels=BOX, voxel_size_nm=VOXEL_NM), 0,
                   plan.n_particles, path, progress=False)
    return path


def tiled_dataset(base: Path, n: int) -> Path:
    """The base set repeated to n volumes (float16, one volume per chunk)."""
    path = base.with_name(f"tiled_{n}.h5")
    if path.is_file():
        return path
    tmp = path.with_suffix(".tmp.h5")
    with h5py.File(base, "r") as src, h5py.File(tmp, "w") as dst:
        volumes = src["volumes"][()]
        m = len(volumes)
        reps = -(-n // m)
        out = dst.create_dataset("volumes", (n, BOX, BOX, BOX), dtype="f2",
                                 chunks=(1, BOX, BOX, BOX))
        for a in range(0, n, m):
            out[a : min(a + m, n)] = volumes[: min(m, n - a)]
        dst.create_dataset("labels", data=np.tile(src["labels"][()], reps)[:n])
        dst.create_dataset("split", data=np.tile(src["split"][()], reps)[:n])
        dst.create_dataset("class_names", data=src["class_names"][()])
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["n_particles"] = n
    tmp.rename(path)
    return path


def model_file(folder: Path, variant: str) -> Path:
    """An initialised ``architecture[-binB]`` network saved as a model file."""
    from tomosift.classify.modelfile import save_model
    from tomosift.classify.models import build_model
    from tomosift.recipe import TrainingSettings

    path = folder / f"{variant}.pt"
    if path.is_file():
        return path
    architecture, _, binning = variant.partition("-bin")
    factor = int(binning or 1)
    settings = TrainingSettings(architecture=architecture, input_binning=factor)
    network = build_model(architecture, OUTPUTS, BOX // factor)
    save_model(path, {"method": variant, "architecture": architecture,
                      "class_names": [f"c{i:02d}" for i in range(OUTPUTS)], "box_voxels": BOX,
                      "settings": asdict(settings), "history": [],
                      "trained_on": {"voxel_size_nm": VOXEL_NM}}, network.state_dict())
    return path


def run_child(model: Path, data: Path, out: Path, args) -> dict:
    """Run one subdivision in a fresh process: wall time, peak RSS (process + children)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-c", CHILD, str(model), str(data), str(out), str(args.k),
               str(args.threads), str(args.batch_size), str(args.workers)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    parent = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            total = parent.memory_info().rss + sum(
                c.memory_info().rss for c in parent.children(recursive=True))
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - started
    output = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"child failed ({child.returncode}): {output}")
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, **json.loads(output.splitlines()[-1])}


def pieces(model: Path, data: Path, args, batches: int = 4) -> dict:
    """Median seconds per subtomogram of read, binning + normalisation and forward."""
    import torch

    from tomosift.classify.devices import as_input, limited_threads
    from tomosift.classify.modelfile import load_model
    from tomosift.classify.predict import restore_cnn
    from tomosift.subdivide.loader import BatchVolumes

    header = load_model(model)
    b = args.batch_size
    dataset = BatchVolumes(data, [(i * b, (i + 1) * b) for i in range(batches)],
                           header["settings"]["normalise"], header["settings"]["input_binning"])
    times = {"read": [], "bin_normalise": [], "forward": []}
    with limited_threads(args.threads):
        network = restore_cnn(header)
        for a, stop in dataset.ranges:
            t0 = time.perf_counter()
            raw = dataset.read(a, stop)
            t1 = time.perf_counter()
            ready = dataset.prepare(raw)
            t2 = time.perf_counter()
            with torch.inference_mode():
                network(as_input(ready, torch.device("cpu")))
            t3 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[key].append(seconds / b)
    dataset.close()
    return {key: float(np.median(values)) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--models", nargs="+", default=["inception3d-bin2", "inception3d"])
    parser.add_argument("--max-size", nargs="*", default=[],
                        help="MODEL=N: run MODEL only up to N (e.g. inception3d=10000)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--base-per-class", type=int, default=50)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/tomosift_bench_subdivide"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    limits = {m: int(v) for m, v in (item.split("=") for item in args.max_size)}
    args.scratch.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"threads {args.threads}, batch {args.batch_size}, workers {args.workers}, k "
          f"{args.k}, box {BOX}³; volumes stored float16 (10⁵ × 40³ × 2 B = 12.8 GB on disk)")
    started = time.perf_counter()
    base = base_dataset(args.scratch, args.base_per_class, args.snr)
    print(f"base set: {len(NAMES)} × {args.base_per_class} at SNR {args.snr} in "
          f"{time.perf_counter() - started:.0f} s")
    rows = []
    try:
        for n in sorted(args.sizes):
            started = time.perf_counter()
            data = tiled_dataset(base, n)
            print(f"tiled to {n} volumes ({data.stat().st_size / 1e9:.2f} GB) in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            for variant in args.models:
                if n > limits.get(variant, n):
                    continue
                model = model_file(args.scratch, variant)
                piece = pieces(model, data, args)
                result = run_child(model, data, args.scratch / f"out_{variant}_{n}", args)
                rows.append((variant, n, result, piece))
                print(f"  {variant} N={n}: {result['wall_s']:.0f} s wall, "
                      f"{n / result['wall_s']:.1f} subtomo/s, peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    print()
    print("| model | N | wall s | features s | clustering+outputs s | subtomo/s | peak RSS MB |"
          " read s/subtomo | bin+norm s/subtomo | forward s/subtomo |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, n, result, piece in rows:
        print(f"| {variant} | {n} | {result['wall_s']:.1f} | {result['features_s']:.1f} | "
              f"{result['cluster_s']:.1f} | {n / result['wall_s']:.1f} | "
              f"{result['peak_rss_mb']:.0f} | {piece['read']:.2e} | "
              f"{piece['bin_normalise']:.2e} | {piece['forward']:.2e} |")


if __name__ == "__main__":
    main()
