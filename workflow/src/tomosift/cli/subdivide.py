"""The subdivision verbs: ``subdivide`` (CNN features and k-means of a dataset, a RELION
particles file or a tomogram, written as RELION subsets) and ``census`` (how many distinct
structures the subsets hold, known or novel); the work is in :mod:`tomosift.subdivide`."""

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
    sub.add_argument("--census", action="store_true",
                     help="then count the distinct structures (tomosift census, into "
                          "OUT_DIR/census)")
    _add_census_options(sub)
    sub.set_defaults(handler=_subdivide)

    census = commands.add_parser(
        "census", help="how many distinct structures a subdivision holds, known or novel")
    census.add_argument("--subdivision", required=True, type=Path,
                        help="a tomosift subdivide output folder (clusters.tsv)")
    census.add_argument("--out-dir", required=True, type=Path)
    census.add_argument("--data", type=Path, default=None,
                        help="its dataset, when not where subdivide.json says")
    census.add_argument("--model", type=Path, default=None,
                        help="with --references training: the model file, when not the one "
                             "the subdivision's feature files name")
    census.add_argument("--threads", type=int, default=None)
    census.add_argument("--seed", type=int, default=1)
    _add_census_options(census)
    census.set_defaults(handler=_census)


def _add_census_options(parser) -> None:
    parser.add_argument("--references", nargs="+", default=[],
                        help="reference maps (MRC files or folders) at the data's voxel size, "
                             "or 'training': the class averages stored in the model at "
                             "training time; a structure none of them explains is novel")
    parser.add_argument("--min-members", type=int, default=10,
                        help="smaller subsets are listed as unresolved (default 10)")
    parser.add_argument("--max-members", type=int, default=100,
                        help="members averaged per subset, a seeded draw (default 100; 0 = "
                             "all)")
    parser.add_argument("--calibration-quantile", type=float, default=0.1,
                        help="same-structure level: this quantile of the ratios of the "
                             "calibration pairs (default 0.1); subsets merge above the midpoint "
                             "between it and the median ratio of all pairs (with --calibration "
                             "pooled: above the level itself)")
    parser.add_argument("--calibration-subsets", type=int, default=8,
                        help="the best-resolved subsets each split into two independent "
                             "averages to calibrate (default 8)")
    parser.add_argument("--calibration", choices=("best_resolved", "per_subset", "pooled"),
                        default="best_resolved",
                        help="best_resolved (default): one same-structure level for every "
                             "pair; per_subset: every subset is split too and each pair is "
                             "held to the lower of its subsets' own levels; pooled: every "
                             "subset is split too and subsets merge above the calibration "
                             "quantile of all the splits' ratios")
    parser.add_argument("--threshold", type=parse_threshold, default="auto",
                        help="auto (default): merge at a same-structure ratio of 0.85 where "
                             "the subset averages hold a median of >= 25 members, at the "
                             "calibrated threshold below that; calibrated: always the "
                             "calibrated threshold; or a number: that fixed ratio (about 1 = "
                             "one structure; similarity.tsv of an earlier census lists the "
                             "ratios)")


def parse_threshold(text: str) -> float | str:
    """--threshold: auto, calibrated or a number."""
    import argparse

    if text in ("auto", "calibrated"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, calibrated or a number, got "
                                         f"{text!r}") from None


def _census_settings(args):
    from tomosift.discovery.census import CensusSettings

    return CensusSettings(min_members=args.min_members,
                          max_members=args.max_members or None,
                          calibration_quantile=args.calibration_quantile,
                          calibration_subsets=args.calibration_subsets,
                          calibration=args.calibration,
                          threshold=args.threshold, seed=args.seed,
                          workers=args.threads or 1)


def _run_census(args, subdivision: Path, out_dir: Path, data: Path | None) -> None:
    from tomosift.subdivide.census import census, summary_lines

    result = census(subdivision, out_dir, args.references, _census_settings(args), data,
                    model_path=args.model)
    for line in summary_lines(result.table, result.unresolved, result.merged):
        print(line)
    print(f"outputs in {out_dir}: census.tsv, members.tsv, unresolved.tsv, structures/ "
          f"({len(result.table)} maps with half-maps and STAR), census.png, similarity.png")


def _census(args) -> None:
    _run_census(args, args.subdivision, args.out_dir, args.data)


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
    if args.census:
        _run_census(args, args.out_dir, args.out_dir / "census", None)
