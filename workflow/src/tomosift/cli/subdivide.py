"""The subdivision verb: ``subdivide`` (CNN features and k-means of a dataset, a RELION
particles file or a tomogram, written as RELION subsets; the work is in
:mod:`tomosift.subdivide`)."""

from __future__ import annotations

from pathlib import Path


def add_commands(commands) -> None:
    """Add the ``subdivide`` subcommand to the ``tomosift`` parser's subparsers."""
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
        from tomosift.tomograms.pick import PickSettings

        result = subdivide_tomogram(args.model, args.tomogram, args.out_dir, args.k,
                                    picks_path=args.picks,
                                    pick_settings=PickSettings(
                                        sigma_nm=args.sigma_nm, polarity=args.polarity,
                                        tilt_max_deg=args.tilt_max_deg),
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
