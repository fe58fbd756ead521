"""The tomogram verbs: ``pick``, ``extract`` and ``import-particles`` (argument parsing only;
the work is in :mod:`tomosift.tomograms`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands) -> None:
    """Add the tomogram subcommands to the ``tomosift`` parser's subparsers."""
    _add_pick(commands)
    _add_extract(commands)
    _add_import_particles(commands)


# -- pick ---------------------------------------------------------------------------------------

def _add_pick(commands) -> None:
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
    pick.add_argument("--ctf-correction", choices=("auto", "wiener", "phase-flip", "none"),
                      default="auto", help="correct the CTF before the DoG (picks only; "
                      "extraction stays raw); auto (default): wiener when the defocus is known "
                      "(--defocus-um, the --truth STAR or the tomogram's header), else none")
    pick.add_argument("--defocus-um", type=float, default=None,
                      help="the tilt series' underfocus, µm (> 0); default: from --truth "
                      "(rlnDefocusU) or the MRC header (tomosift's simulated tomograms)")
    pick.add_argument("--voltage-kv", type=float, default=300.0,
                      help="with --defocus-um: acceleration voltage (default 300)")
    pick.add_argument("--cs-mm", type=float, default=2.0,
                      help="with --defocus-um: spherical aberration (default 2)")
    pick.add_argument("--amplitude-contrast", type=float, default=0.07,
                      help="with --defocus-um: amplitude contrast (default 0.07)")
    pick.add_argument("--wiener-snr", type=float, default=1.0,
                      help="the Wiener filter's flat SNR (default 1)")
    pick.add_argument("--wedge-suppression", action=argparse.BooleanOptionalAction,
                      default=True, help="drop picks that the missing-wedge side lobes of "
                      "stronger picks explain (default: on)")
    pick.add_argument("--tilt-max-deg", type=float, default=60.0,
                      help="the tilt range ±this (tilt axis y), for the wedge's side lobes "
                      "(default 60)")
    pick.add_argument("--box", type=int, default=40, help="box for extraction (optics block)")
    pick.add_argument("--name", default=None, help="rlnTomoName (default: the file's stem)")
    pick.add_argument("--truth", type=Path, help="true particles (STAR) to score the picks")
    pick.add_argument("--tolerance-voxels", type=float, default=2.0,
                      help="a pick within this distance of a true particle finds it")
    pick.set_defaults(handler=_pick)


def _pick(args) -> None:
    from tomosift.errors import TomosiftError
    from tomosift.simulate.ctf import Optics
    from tomosift.tomograms.pick import (
        PickSettings,
        pick_tomogram,
        read_truth,
        resolve_correction,
        score_pick_files,
        tomogram_optics,
    )

    if args.truth:  # read before picking, so that a bad truth file fails fast
        read_truth(args.truth)
    base = Optics(voltage_kv=args.voltage_kv, cs_mm=args.cs_mm,
                  amplitude_contrast=args.amplitude_contrast)
    optics, source = tomogram_optics(args.tomogram, args.defocus_um, args.truth, base)
    correction = resolve_correction(args.ctf_correction, optics)
    if correction != "none" and optics is None:
        raise TomosiftError(f"{args.tomogram}: --ctf-correction {correction} needs the defocus: "
                            "give --defocus-um (neither --truth nor the MRC header records it)")
    defaults = PickSettings()
    settings = PickSettings(
        sigma_nm=args.sigma_nm, k=args.k, min_distance_nm=args.min_distance_nm,
        edge_nm=args.edge_nm,
        threshold=defaults.threshold if args.threshold is None else args.threshold,
        max_picks=args.max_picks, polarity=args.polarity, sigma_max_nm=args.sigma_max_nm,
        ctf_correction=correction, wiener_snr=args.wiener_snr,
        wedge_suppression=args.wedge_suppression, tilt_max_deg=args.tilt_max_deg)
    count = pick_tomogram(args.tomogram, args.out, settings, tomo_name=args.name,
                          box_voxels=args.box, optics=optics)
    scales = ", ".join(f"{s:.3g}" for s in settings.sigmas_nm())
    ctf_text = ("no CTF correction" if correction == "none" else
                f"{correction} CTF correction at {optics.defocus_um:g} µm ({source})")
    wedge_text = (f", wedge side lobes of ±{settings.tilt_max_deg:g}° suppressed"
                  if settings.wedge_suppression else "")
    print(f"{args.out}: {count} particles picked in {args.tomogram} (sigma {scales} nm, "
          f"k {settings.k:g}, robust z >= {settings.threshold:g}, {ctf_text}{wedge_text})")
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
    from tomosift.tomograms.extract import extract_subtomograms

    summary = extract_subtomograms(
        args.tomogram, args.picks, args.out, box_voxels=args.box,
        voxel_size_nm=args.voxel_size_nm, smooth_sigma_nm=args.smooth_sigma_nm,
        truth_path=args.truth, match_tolerance_voxels=args.match_tolerance_voxels,
        tilt_max_deg=args.tilt_max_deg, polarity=args.polarity,
        test_fraction=args.test_fraction, seed=args.seed, dtype=args.dtype)
    print(summary.line(args.out))


# -- import-particles ---------------------------------------------------------------------------

def _add_import_particles(commands) -> None:
    imported = commands.add_parser(
        "import-particles", help="copy MRC subtomograms (RELION STAR or folders) into a "
        "dataset, or reconstruct RELION 5 / WarpTools 2D-stack particles")
    imported.add_argument("source", type=Path,
                          help="particles STAR, an optimisation set (2D stacks), a folder of "
                          "MRC files or of class folders")
    imported.add_argument("--tomograms", type=Path, default=None,
                          help="the tomograms STAR of 2D-stack particles (default: the one "
                          "the optimisation set names, or tomograms.star beside the STAR)")
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
    from tomosift.tomograms.imports import import_particles

    summary = import_particles(
        args.source, args.out, tilt_max_deg=args.tilt_max_deg, polarity=args.polarity,
        labels=not args.no_labels, test_fraction=args.test_fraction, seed=args.seed,
        dtype=args.dtype, tomograms=args.tomograms)
    print(summary.line(args.out))
