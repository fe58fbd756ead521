"""The ``tomosift`` command line: a thin layer over the package's functions."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomosift import __version__
from tomosift.errors import TomosiftError
from tomosift.recipe import METHODS, NORMALISATIONS, PRECISIONS, TrainingSettings
from tomosift.simulate.tomography import POLARITIES


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except TomosiftError as exc:
        print(f"tomosift: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomosift",
        description="Sort cryo-electron subtomograms into structurally homogeneous subsets.",
    )
    parser.add_argument("--version", action="version", version=f"tomosift {__version__}")
    commands = parser.add_subparsers(title="commands")

    density = commands.add_parser("density", help="density map of a PDB/mmCIF model or MRC map")
    density.add_argument("input", help="PDB ID, PDB/mmCIF file (.gz too) or MRC map")
    density.add_argument("--out", required=True, type=Path, help="output MRC file")
    _add_grid_options(density)
    density.add_argument("--resolution-nm", type=float, default=0.92)
    density.add_argument("--method", choices=("gaussian", "electron"), default="gaussian")
    density.add_argument("--assembly", choices=("first", "none"), default="first")
    _add_source_options(density)
    density.set_defaults(handler=_density)

    simulate = commands.add_parser("simulate", help="simulate a dataset of subtomograms (HDF5)")
    simulate.add_argument("--structures", nargs="+", required=True,
                          help="structure files, MRC maps, or folders holding them")
    noise = simulate.add_mutually_exclusive_group(required=True)
    noise.add_argument("--snr", type=float,
                       help="the paper's noise: every particle calibrated to this SNR")
    noise.add_argument("--dose", type=float, metavar="E_PER_A2",
                       help="detector noise: this total dose over the series (e/Å²); the SNR "
                            "is then measured per class")
    simulate.add_argument("--tilt-max-deg", type=float, required=True)
    simulate.add_argument("--tilt-step-deg", type=float, default=2.0)
    simulate.add_argument("--per-class", type=int, required=True)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--out", required=True, type=Path)
    simulate.add_argument("--mode", choices=("fourier", "wbp", "wedge"), default="fourier")
    simulate.add_argument("--noise-stage", choices=("before_ctf", "after_ctf"),
                          default="before_ctf")
    simulate.add_argument("--max-shift-voxels", type=float, default=4.0)
    simulate.add_argument("--no-empty", action="store_true", help="leave out the empty class")
    simulate.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    simulate.add_argument("--defocus-um", type=float, default=5.0, help="underfocus, µm")
    simulate.add_argument("--defocus-range-um", type=float, nargs=2, metavar=("LOW", "HIGH"),
                          help="draw each particle's defocus from this range")
    simulate.add_argument("--b-factor-a2", type=float, default=0.0)
    simulate.add_argument("--max-neighbours", type=int, default=0,
                          help="crowding: up to this many particles of other classes around")
    simulate.add_argument("--ice-thickness-nm", type=float, default=0.0)
    simulate.add_argument("--solvent-contrast", type=float, default=0.0,
                          help="solvent / protein potential (0.64 for vitreous ice)")
    simulate.add_argument("--polarity", choices=POLARITIES, default="recorded",
                          help="white: particles white (positive), as RELION expects")
    _add_grid_options(simulate)
    simulate.set_defaults(handler=_simulate)

    show = commands.add_parser("show", help="summary of a dataset file")
    show.add_argument("dataset", type=Path)
    show.set_defaults(handler=_show)

    snr = commands.add_parser(
        "snr", help="Frank & Al-Ali SNR estimate from pairs of subtomograms (same particle)"
    )
    snr.add_argument("maps", nargs="*", type=Path,
                     help="MRC files taken in pairs: A1 B1 A2 B2 ...")
    snr.add_argument("--pairs", type=Path, help="TSV with two columns of MRC paths, one pair a row")
    snr.set_defaults(handler=_snr)

    train = commands.add_parser("train", help="train a classifier on a dataset's train split")
    recipe = TrainingSettings()  # the paper's recipe, as the defaults
    train.add_argument("--data", required=True, type=Path, help="dataset file (HDF5)")
    train.add_argument("--model", required=True, choices=METHODS)
    train.add_argument("--out", required=True, type=Path, help="model file to write")
    train.add_argument("--epochs", type=int, default=recipe.epochs)
    train.add_argument("--batch-size", type=int, default=recipe.batch_size)
    train.add_argument("--learning-rate", type=float, default=recipe.learning_rate)
    train.add_argument("--lr-decay", type=float, default=recipe.lr_decay)
    train.add_argument("--dropout", type=float, default=recipe.dropout,
                       help="dropout rate (default: the model's; Inception3D 0.3 as the paper)")
    train.add_argument("--augment", action="store_true",
                       help="random 180° rotations that keep the missing wedge")
    train.add_argument("--normalise", choices=NORMALISATIONS, default=recipe.normalise)
    train.add_argument("--seed", type=int, default=recipe.seed)
    train.add_argument("--device", default=recipe.device, help="auto, cpu, cuda or cuda:N")
    train.add_argument("--precision", choices=PRECISIONS, default=recipe.precision)
    train.add_argument("--threads", type=int, default=recipe.threads)
    train.add_argument("--input-binning", type=int, default=recipe.input_binning,
                       help="Fourier-bin subtomograms by this factor first (2: 40³ -> 20³)")
    train.add_argument("--exclude-class", action="append", default=[], metavar="NAME",
                       help="leave this class out of training (repeatable; leave-one-out)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="test a model on a dataset split")
    evaluate.add_argument("--model", required=True, type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--split", choices=("test", "train", "all"), default="test")
    evaluate.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int, default=None,
                          help="CPU threads at most (default: all)")
    evaluate.set_defaults(handler=_evaluate)

    resolve = commands.add_parser("resolve", help="where a PDB ID is found (or downloaded to)")
    resolve.add_argument("source")
    _add_source_options(resolve)
    resolve.set_defaults(handler=_resolve)

    from tomosift import tomogram_commands
    from tomosift.discovery import commands as discovery_commands

    discovery_commands.add_commands(commands)
    tomogram_commands.add_commands(commands)
    return parser


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voxel-size-nm", type=float, default=0.92)
    parser.add_argument("--box", type=int, default=40, help="box edge in voxels")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--structure-dir", action="append", default=[],
                        help="folder searched for <id>.pdb/.cif/.mrc (repeatable)")
    parser.add_argument("--download-url", default="https://files.rcsb.org/download")
    parser.add_argument("--cache-dir", type=Path, default=Path("resources/structures"))
    parser.add_argument("--offline", action="store_true")


def _resolve_source(args) -> Path:
    from tomosift.structures import pdb_mirror_dir, resolve_structure, search_dirs

    return resolve_structure(
        args.input if hasattr(args, "input") else args.source,
        search_dirs(args.structure_dir),
        pdb_mirror_dir(),
        None if args.offline else args.download_url,
        args.cache_dir,
    )


def _density(args) -> None:
    from tomosift.density import DensitySettings, make_density
    from tomosift.io import write_mrc

    settings = DensitySettings(
        box_voxels=args.box, voxel_size_nm=args.voxel_size_nm, resolution_nm=args.resolution_nm,
        method=args.method, assembly=args.assembly,
    )
    path = _resolve_source(args)
    started = time.perf_counter()
    volume, row = make_density(path, settings, name=Path(args.out).stem, source=args.input)
    seconds = time.perf_counter() - started
    write_mrc(args.out, volume, settings.voxel_size_nm)
    mass = f"{row.mass_kda:.1f} kDa, {row.atoms} atoms, " if row.mass_kda is not None else ""
    print(f"{args.out}: {row.description}; {mass}Rg {row.radius_of_gyration_nm:.2f} nm, "
          f"extent {row.max_extent_nm:.1f} nm, {seconds:.2f} s")


def _structure_files(entries: Sequence[str]) -> list[Path]:
    from tomosift.structures import MAP_SUFFIXES, MODEL_SUFFIXES

    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower()
                           .removesuffix(".gz").endswith(MODEL_SUFFIXES + MAP_SUFFIXES))
            if not found:
                raise TomosiftError(f"{path}: the folder holds no PDB/mmCIF/MRC files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TomosiftError(f"{path}: file not found")
    if not files:
        raise TomosiftError("--structures: the structure list is empty")
    return files


def _simulate(args) -> None:
    from tomosift.datasets import DatasetPlan, open_dataset, simulate_shard
    from tomosift.density import DensitySettings, make_density
    from tomosift.simulate import Optics, SimulationSettings
    from tomosift.simulate.specimen import Crowding, Ice
    from tomosift.structures import default_name

    files = _structure_files(args.structures)
    grid = DensitySettings(box_voxels=args.box, voxel_size_nm=args.voxel_size_nm)
    names, maps = [], []
    for path in files:
        volume, _ = make_density(path, grid)
        names.append(default_name(str(path)))
        maps.append(volume)
    optics = Optics(defocus_um=args.defocus_um, b_factor_a2=args.b_factor_a2,
                    defocus_range_um=tuple(args.defocus_range_um) if args.defocus_range_um
                    else None)
    settings = SimulationSettings(
        box_voxels=args.box, voxel_size_nm=args.voxel_size_nm, tilt_max_deg=args.tilt_max_deg,
        tilt_step_deg=args.tilt_step_deg, optics=optics, reconstruction=args.mode,
        noise_stage=args.noise_stage, polarity=args.polarity,
        ice=Ice(thickness_nm=args.ice_thickness_nm, solvent_contrast=args.solvent_contrast),
    )
    plan = DatasetPlan(
        tuple(names), per_class=args.per_class, snr=args.snr, dose_e_per_a2=args.dose,
        seed=args.seed, empty_class=not args.no_empty, max_shift_voxels=args.max_shift_voxels,
        volume_dtype=args.dtype, crowding=Crowding(max_neighbours=args.max_neighbours),
    )
    simulate_shard(maps, plan, settings, 0, plan.n_particles, args.out)
    with open_dataset(args.out) as h5:
        measured = h5.attrs["measured_snr_mean"]
    print(f"{args.out}: {plan.n_particles} subtomograms of {len(plan.class_names)} classes, "
          f"measured SNR {measured:.3g} (mean over the structure classes)")


def _show(args) -> None:
    from tomosift.datasets import dataset_summary

    print(dataset_summary(args.dataset))


def _snr(args) -> None:
    from tomosift.io import read_mrc
    from tomosift.snr import frank_al_ali_snr, summarise_pair_estimates

    paths = list(args.maps)
    if args.pairs is not None:
        if not args.pairs.is_file():
            raise TomosiftError(f"{args.pairs}: file not found")
        for number, line in enumerate(args.pairs.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise TomosiftError(f"{args.pairs}: line {number} must hold two paths")
            paths += [Path(f) for f in fields]
    if len(paths) < 2 or len(paths) % 2:
        raise TomosiftError("snr: give an even number (at least 2) of MRC files, in pairs")
    estimates = []
    for first, second in zip(paths[::2], paths[1::2], strict=True):
        a, _ = read_mrc(first)
        b, _ = read_mrc(second)
        estimate = frank_al_ali_snr(a, b)
        estimates.append(estimate)
        print(f"{first}\t{second}\t{estimate:.4g}")
    summary = summarise_pair_estimates(np.asarray(estimates))
    print(f"pairs {summary['pairs']}: mean SNR {summary['mean_snr']:.4g} "
          f"(± {summary['standard_error']:.2g} s.e.), median {summary['median_snr']:.4g}")


def _train(args) -> None:
    from tomosift.classify.train import train_cnn, train_rif_svm

    if args.model == "rif-svm":
        record = train_rif_svm(args.data, args.out, seed=args.seed, threads=args.threads)
        cv = record["cv_accuracy"]
        print(f"{args.out}: RIF-SVM, C {record['chosen_c']:g}, gamma {record['chosen_gamma']}, "
              f"cross-validated accuracy {'n/a' if cv is None else f'{cv:.3f}'}")
        return
    settings = TrainingSettings(
        architecture=args.model, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_decay=args.lr_decay, augment=args.augment,
        dropout=args.dropout, normalise=args.normalise, seed=args.seed, device=args.device,
        threads=args.threads, precision=args.precision, input_binning=args.input_binning,
        exclude_classes=tuple(args.exclude_class),
    )
    history = train_cnn(args.data, settings, args.out)
    last = history[-1]
    print(f"{args.out}: {args.model}, {len(history)} epochs, train loss {last.loss:.3f}, "
          f"train accuracy {last.accuracy:.3f}, {last.seconds_per_subtomogram:.4f} s per "
          "subtomogram per epoch")


def _evaluate(args) -> None:
    import json

    from tomosift.classify.predict import evaluate
    from tomosift.io import write_text

    metrics = evaluate(args.model, args.data, args.split, args.device, threads=args.threads)
    write_text(args.out, json.dumps(metrics, indent=1))
    print(f"{args.out}: {metrics['method']} accuracy {metrics['accuracy']:.3f} on "
          f"{metrics['n_subtomograms']} {args.split} subtomograms, "
          f"{metrics['inference_seconds_per_subtomogram']:.4f} s per subtomogram")


def _resolve(args) -> None:
    print(_resolve_source(args))


if __name__ == "__main__":
    sys.exit(main())
