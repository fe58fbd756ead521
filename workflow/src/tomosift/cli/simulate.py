"""The simulation verbs: ``simulate`` (a dataset of subtomograms), ``show``, ``snr`` and
``simulate-tomogram`` (a crowded tomogram and its truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomosift.cli.common import add_grid_options, structure_files
from tomosift.errors import TomosiftError
from tomosift.simulate.tomography import POLARITIES


def add_commands(commands) -> None:
    """Add the simulation subcommands to the ``tomosift`` parser's subparsers."""
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
    add_grid_options(simulate)
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
    _add_simulate_tomogram(commands)


def _simulate(args) -> None:
    from tomosift.datasets import DatasetPlan, open_dataset, simulate_shard
    from tomosift.density import DensitySettings, make_density
    from tomosift.simulate import Optics, SimulationSettings
    from tomosift.simulate.specimen import Crowding, Ice
    from tomosift.structures import default_name

    files = structure_files(args.structures)
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


# -- simulate-tomogram ------------------------------------------------------------------------

def _add_simulate_tomogram(commands) -> None:
    simulate = commands.add_parser(
        "simulate-tomogram", help="simulate a crowded tomogram (MRC) and its truth (STAR)")
    simulate.add_argument("--structures", nargs="+", required=True,
                          help="structure files, MRC maps, or folders holding them")
    simulate.add_argument("--size", type=int, default=256, help="x = y extent, voxels (even)")
    simulate.add_argument("--thickness", type=int, default=None,
                          help="z extent, voxels (a central slab; default: --size)")
    simulate.add_argument("--particles", type=int, default=300)
    simulate.add_argument("--out", required=True, type=Path, help="tomogram MRC to write")
    simulate.add_argument("--truth", required=True, type=Path, help="truth STAR to write")
    simulate.add_argument("--name", default=None, help="rlnTomoName (default: stem of --out)")
    noise = simulate.add_mutually_exclusive_group()
    noise.add_argument("--dose", type=float, default=None, metavar="E_PER_A2",
                       help="detector noise: total dose over the series, e/Å² (default 100)")
    noise.add_argument("--snr", type=float, default=None,
                       help="noise set for this mean SNR of the particles' boxes")
    simulate.add_argument("--tilt-max-deg", type=float, default=60.0)
    simulate.add_argument("--tilt-step-deg", type=float, default=2.0)
    simulate.add_argument("--voxel-size-nm", type=float, default=0.92)
    simulate.add_argument("--box", type=int, default=40,
                          help="edge of the class maps and of the SNR boxes, voxels")
    simulate.add_argument("--min-gap-nm", type=float, default=2.0)
    simulate.add_argument("--defocus-um", type=float, default=5.0, help="underfocus, µm")
    simulate.add_argument("--mode", choices=("fourier", "wbp", "wedge"), default="fourier",
                          help="reconstruction (default fourier, the subtomogram simulator's)")
    simulate.add_argument("--polarity", choices=("recorded", "white"), default="recorded",
                          help="white: particles white (positive), as RELION expects")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.set_defaults(handler=_simulate_tomogram)


def _simulate_tomogram(args) -> None:
    import time

    from tomosift.density import DensitySettings, make_density
    from tomosift.simulate import Optics, SimulationSettings
    from tomosift.simulate.cell import TomogramPlan, simulate_tomogram, write_tomogram
    from tomosift.structures import default_name

    started = time.perf_counter()
    files = structure_files(args.structures)
    grid = DensitySettings(box_voxels=args.box, voxel_size_nm=args.voxel_size_nm)
    maps = {}
    for path in files:
        name = default_name(str(path))
        if name in maps:
            raise TomosiftError(f"{path}: a second structure named '{name}'")
        maps[name] = make_density(path, grid)[0]
    settings = SimulationSettings(
        voxel_size_nm=args.voxel_size_nm, tilt_max_deg=args.tilt_max_deg,
        tilt_step_deg=args.tilt_step_deg, optics=Optics(defocus_um=args.defocus_um),
        reconstruction=args.mode, polarity=args.polarity)
    plan = TomogramPlan(
        size_voxels=args.size, thickness_voxels=args.thickness, n_particles=args.particles,
        min_gap_nm=args.min_gap_nm,
        dose_e_per_a2=None if args.snr is not None else (100.0 if args.dose is None else args.dose),
        snr=args.snr, seed=args.seed)
    tomogram = simulate_tomogram(maps, settings, plan)
    name = args.name or args.out.stem
    write_tomogram(tomogram, args.out, args.truth, name, box_voxels=args.box)
    counts = np.bincount(tomogram.labels, minlength=len(tomogram.class_names))
    per_class = ", ".join(f"{n} {c}" for n, c in zip(tomogram.class_names, counts, strict=True))
    z, y, x = tomogram.volume.shape
    print(f"{args.out}: {len(tomogram.labels)} particles ({per_class}), {x} x {y} x {z} voxels, "
          f"{time.perf_counter() - started:.1f} s; truth {args.truth}")
