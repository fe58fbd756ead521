"""The tomogram verbs of the ``tomosift`` command line: ``simulate-tomogram``, ``pick``,
``extract``, ``import-particles`` and ``subdivide`` (argument parsing only; the work is in
:mod:`tomosift.simulate.cell`, :mod:`tomosift.pick`, :mod:`tomosift.extract` and
:mod:`tomosift.subdivide`)."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Add the tomogram subcommands to the ``tomosift`` parser's subparsers."""
    _add_simulate_tomogram(commands)
    _add_pick(commands)
    _add_extract(commands)
    _add_import_particles(commands)
    _add_subdivide(commands)


# -- simulate-tomogram ------------------------------------------------------------------------

def _add_simulate_tomogram(commands) -> None:
    from pathlib import Path

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

    import numpy as np

    from tomosift.cli import _structure_files
    from tomosift.density import DensitySettings, make_density
    from tomosift.errors import TomosiftError
    from tomosift.simulate import Optics, SimulationSettings
    from tomosift.simulate.cell import TomogramPlan, simulate_tomogram, write_tomogram
    from tomosift.structures import default_name

    started = time.perf_counter()
    files = _structure_files(args.structures)
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


# -- pick ---------------------------------------------------------------------------------------

def _add_pick(commands) -> None:
    from pathlib import Path

    pick = commands.add_parser(
        "pick", help="template-free particle picking (3D Difference of Gaussians)")
    pick.add_argument("tomogram", type=Path, help="T.mrc (voxel size from its header)")
    pick.add_argument("--out", required=True, type=Path, help="particles STAR file to write")
    pick.add_argument("--sigma-nm", type=float, default=7.0, help="DoG sigma (default 7, the "
                      "paper's)")
    pick.add_argument("--sigma-max-nm", type=float, default=None,
                      help="multi-scale DoG from --sigma-nm (then the smallest scale) up to this "
                      "sigma, largest blobs first (default: one scale, the paper's)")
    pick.add_argument("--k", type=float, default=1.1, help="DoG sigma ratio (default 1.1)")
    pick.add_argument("--min-distance-nm", type=float, default=None,
                      help="least distance between picks (default: sigma)")
    pick.add_argument("--edge-nm", type=float, default=None,
                      help="drop picks closer to a face (default: k * sigma)")
    pick.add_argument("--threshold", type=float, default=None,
                      help="least robust z-score of the DoG response (default 5)")
    pick.add_argument("--max-picks", type=int, default=None, help="keep the N best picks")
    pick.add_argument("--polarity", choices=("dark", "white"), default="dark",
                      help="particles dark (as recorded, default) or white")
    pick.add_argument("--box", type=int, default=40, help="box for extraction (optics block)")
    pick.add_argument("--name", default=None, help="rlnTomoName (default: the file's stem)")
    pick.add_argument("--truth", type=Path, help="true particles (STAR) to score the picks")
    pick.add_argument("--tolerance-voxels", type=float, default=2.0,
                      help="a pick within this distance of a true particle finds it")
    pick.set_defaults(handler=_pick)


def _pick(args) -> None:
    from tomosift.pick import PickSettings, pick_tomogram, read_truth, score_pick_files

    defaults = PickSettings()
    settings = PickSettings(
        sigma_nm=args.sigma_nm, k=args.k, min_distance_nm=args.min_distance_nm,
        edge_nm=args.edge_nm,
        threshold=defaults.threshold if args.threshold is None else args.threshold,
        max_picks=args.max_picks, polarity=args.polarity, sigma_max_nm=args.sigma_max_nm)
    if args.truth:  # read before picking, so that a bad truth file fails fast
        read_truth(args.truth)
    count = pick_tomogram(args.tomogram, args.out, settings, tomo_name=args.name,
                          box_voxels=args.box)
    scales = ", ".join(f"{s:.3g}" for s in settings.sigmas_nm())
    print(f"{args.out}: {count} particles picked in {args.tomogram} (sigma {scales} nm, "
          f"k {settings.k:g}, robust z >= {settings.threshold:g})")
    if args.truth:
        table = score_pick_files(args.out, args.truth, args.tolerance_voxels)
        overall = table.iloc[-1]
        print(f"against {args.truth}: precision {overall['precision']:.3f}, recall "
              f"{overall['recall']:.3f} ({int(overall['found'])} of {int(overall['truth'])} "
              f"found within {args.tolerance_voxels:g} voxels, {int(overall['false_picks'])} "
              "false picks)")
        print(table[["class", "truth", "found", "recall"]].to_string(
            index=False, float_format=lambda x: f"{x:.3f}"))


# -- extract ------------------------------------------------------------------------------------

def _add_extract(commands) -> None:
    from pathlib import Path

    extract = commands.add_parser(
        "extract", help="cut subtomograms around picks in a tomogram into a dataset (HDF5)")
    extract.add_argument("tomogram", type=Path, help="the tomogram (MRC)")
    extract.add_argument("picks", type=Path, help="the picks (RELION particles STAR)")
    extract.add_argument("--box", type=int, default=40, help="output box edge, voxels (even)")
    extract.add_argument("--voxel-size-nm", type=float, default=None,
                         help="output voxel size (bins by Fourier cropping; default the "
                         "tomogram's)")
    extract.add_argument("--smooth-sigma-nm", type=float, default=None,
                         help="Gaussian smoothing sigma in nm (the paper's: 1; default none)")
    extract.add_argument("--truth", type=Path, default=None,
                         help="a simulated tomogram's truth STAR: labels by matching picks")
    extract.add_argument("--match-tolerance-voxels", type=float, default=2.0,
                         help="largest pick-to-truth distance of a match (default 2)")
    extract.add_argument("--tilt-max-deg", type=float, default=60.0,
                         help="the tilt range the tomogram was recorded with (default 60)")
    extract.add_argument("--polarity", choices=("dark", "white"), default="dark",
                         help="how particles appear in the tomogram (default dark, as recorded)")
    extract.add_argument("--test-fraction", type=float, default=0.5)
    extract.add_argument("--seed", type=int, default=1)
    extract.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    extract.add_argument("--out", required=True, type=Path, help="dataset file to write")
    extract.set_defaults(handler=_extract)


def _extract(args) -> None:
    from tomosift.extract import extract_subtomograms, summary_line

    summary = extract_subtomograms(
        args.tomogram, args.picks, args.out, box_voxels=args.box,
        voxel_size_nm=args.voxel_size_nm, smooth_sigma_nm=args.smooth_sigma_nm,
        truth_path=args.truth, match_tolerance_voxels=args.match_tolerance_voxels,
        tilt_max_deg=args.tilt_max_deg, polarity=args.polarity,
        test_fraction=args.test_fraction, seed=args.seed, dtype=args.dtype)
    print(summary_line(args.out, summary))


# -- import-particles ---------------------------------------------------------------------------

def _add_import_particles(commands) -> None:
    from pathlib import Path

    imported = commands.add_parser(
        "import-particles", help="copy MRC subtomograms (RELION STAR or folders) into a dataset")
    imported.add_argument("source", type=Path,
                          help="particles STAR, a folder of MRC files or of class folders")
    imported.add_argument("--tilt-max-deg", type=float, default=60.0,
                          help="the tilt range of the subtomograms (default 60)")
    imported.add_argument("--polarity", choices=("white", "dark"), default="white",
                          help="how particles appear (default white, RELION's convention)")
    imported.add_argument("--no-labels", action="store_true",
                          help="ignore rlnClassNumber / class folders (labels unknown)")
    imported.add_argument("--test-fraction", type=float, default=0.5)
    imported.add_argument("--seed", type=int, default=1)
    imported.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    imported.add_argument("--out", required=True, type=Path, help="dataset file to write")
    imported.set_defaults(handler=_import_particles)


def _import_particles(args) -> None:
    from tomosift.extract import import_particles, summary_line

    summary = import_particles(
        args.source, args.out, tilt_max_deg=args.tilt_max_deg, polarity=args.polarity,
        labels=not args.no_labels, test_fraction=args.test_fraction, seed=args.seed,
        dtype=args.dtype)
    print(summary_line(args.out, summary))


# -- subdivide ----------------------------------------------------------------------------------

def _add_subdivide(commands) -> None:
    from pathlib import Path

    sub = commands.add_parser(
        "subdivide", help="CNN features + k-means of a dataset of any size, RELION subsets")
    sub.add_argument("--model", required=True, type=Path, help="trained CNN model file")
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path,
                        help="dataset (.h5), RELION particles .star, or a folder to import")
    source.add_argument("--tomogram", type=Path,
                        help="a tomogram (MRC): picked, cut at the model's box and voxel size")
    sub.add_argument("--picks", type=Path,
                     help="with --tomogram: use these picks (STAR) instead of picking")
    sub.add_argument("--sigma-nm", type=float, default=7.0,
                     help="with --tomogram: DoG scale of the picker (default 7, the paper's)")
    sub.add_argument("--smooth-sigma-nm", type=float, default=None,
                     help="with --tomogram: Gaussian smoothing of the subtomograms")
    sub.add_argument("--tilt-max-deg", type=float, default=60.0,
                     help="with --tomogram: its tilt range (default 60)")
    sub.add_argument("--polarity", choices=("dark", "white"), default="dark",
                     help="with --tomogram: particles dark (as reconstructed, default) or white")
    sub.add_argument("--k", required=True, type=int, help="number of clusters")
    sub.add_argument("--out-dir", required=True, type=Path)
    sub.add_argument("--averages", type=int, default=0,
                     help="average this many of the largest clusters (default 0)")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--workers", type=int, default=0,
                     help="DataLoader processes reading batches ahead (default 0)")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--threads", type=int, default=None)
    sub.add_argument("--seed", type=int, default=1)
    sub.set_defaults(handler=_subdivide)


def _subdivide(args) -> None:
    from tomosift.subdivide import subdivide, subdivide_tomogram

    options = dict(averages=args.averages, batch_size=args.batch_size, workers=args.workers,
                   device=args.device, threads=args.threads, seed=args.seed)
    if args.tomogram is not None:
        from tomosift.pick import PickSettings

        result = subdivide_tomogram(args.model, args.tomogram, args.out_dir, args.k,
                                    picks_path=args.picks,
                                    pick_settings=PickSettings(sigma_nm=args.sigma_nm,
                                                               polarity=args.polarity),
                                    smooth_sigma_nm=args.smooth_sigma_nm,
                                    tilt_max_deg=args.tilt_max_deg, **options)
    else:
        result = subdivide(args.model, args.data, args.out_dir, args.k, **options)
    for line in result.summary_lines:
        print(line)
    stars = len(result.files["subsets"])
    print(f"outputs in {args.out_dir}: clusters.tsv, summary.tsv, subsets/ (all.star and "
          f"{stars} cluster STAR files), cluster_sizes.png, embedding.png"
          + (f", averages/ ({len(result.files['averages'])} MRC) and averages.png"
             if args.averages > 0 else ""))
