"""The discovery verbs: ``features``, ``cluster``, ``align``,
``average`` and ``fsc`` (argument parsing only; the work is in the discovery modules)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tomosift.errors import TomosiftError


def add_commands(commands) -> None:
    """Add the discovery subcommands to the ``tomosift`` parser's subparsers."""
    from tomosift.discovery.features import LAYERS, SOURCES

    features = commands.add_parser("features", help="structural features of a dataset (HDF5)")
    features.add_argument("--data", required=True, type=Path, help="dataset file (HDF5)")
    features.add_argument("--out", required=True, type=Path, help="feature file to write")
    features.add_argument("--source", choices=SOURCES, default="cnn",
                          help="cnn (needs --model), rif or posenorm (default cnn)")
    features.add_argument("--model", type=Path, help="trained CNN model file")
    features.add_argument("--layer", choices=LAYERS, default="logits",
                          help="CNN layer: logits (pre-softmax, the paper's), hidden or "
                          "embedding (models trained with --embedding-dim)")
    features.add_argument("--split", choices=("all", "train", "test"), default="all")
    features.add_argument("--device", default="auto")
    features.add_argument("--threads", type=int, default=None)
    features.set_defaults(handler=_features)

    cluster = commands.add_parser("cluster", help="k-means clusters of a feature file")
    cluster.add_argument("--features", required=True, type=Path)
    cluster.add_argument("--k", type=int, default=100)
    cluster.add_argument("--out", required=True, type=Path, help="cluster table (TSV)")
    cluster.add_argument("--split", choices=("all", "train", "test"), default="all")
    cluster.add_argument("--seed", type=int, default=1)
    cluster.set_defaults(handler=_cluster)

    align = commands.add_parser("align", help="align B onto A under the missing wedge")
    align.add_argument("reference", type=Path, help="A.mrc")
    align.add_argument("moving", type=Path, help="B.mrc")
    _add_tilt_options(align)
    align.add_argument("--reference-tilt-max-deg", type=float, default=None,
                       help="A's tilt range if it differs from B's (90: an average, no wedge)")
    align.add_argument("--out", type=Path, help="write B rotated and shifted onto A (MRC)")
    align.add_argument("--star", type=Path, help="write the pose as a RELION STAR file")
    align.set_defaults(handler=_align)

    average = commands.add_parser(
        "average", help="reference-free classification and averaging of subtomograms")
    average.add_argument("--data", required=True, nargs="+", type=Path,
                         help="a dataset (.h5), a particles .star or .mrc subtomograms")
    average.add_argument("--subset", help="only the members of TABLE.tsv:CLUSTER (datasets)")
    average.add_argument("--classes", type=int, default=3)
    average.add_argument("--iterations", type=int, default=5)
    _add_tilt_options(average, default_max_deg=None)
    average.add_argument("--invert", action="store_true",
                         help="MRC/STAR particles are dark (negate them); datasets say so")
    average.add_argument("--seed", type=int, default=1)
    average.add_argument("--threads", type=int, default=None,
                         help="CPU threads, and processes aligning particles (same result)")
    average.add_argument("--out-dir", required=True, type=Path)
    average.set_defaults(handler=_average)

    fsc = commands.add_parser("fsc", help="Fourier shell correlation of two maps")
    fsc.add_argument("first", type=Path, help="A.mrc")
    fsc.add_argument("second", type=Path, help="B.mrc")
    fsc.add_argument("--align", action="store_true", help="align B onto A first (no wedge)")
    fsc.add_argument("--mask", choices=("soft-sphere", "none"), default="soft-sphere")
    fsc.add_argument("--out", type=Path, help="curve TSV to write (and a PNG beside it)")
    fsc.set_defaults(handler=_fsc)


def _add_tilt_options(parser: argparse.ArgumentParser,
                      default_max_deg: float | None = 60.0) -> None:
    parser.add_argument("--tilt-max-deg", type=float, default=default_max_deg,
                        help="largest tilt angle (90: no missing wedge); "
                        + ("default 60" if default_max_deg else
                           "default: a dataset's own, else 60"))
    parser.add_argument("--tilt-min-deg", type=float, default=None,
                        help="smallest tilt angle (default: minus the largest)")


def _tilt_range(args, recorded: tuple[float, float] | None = None) -> tuple[float, float]:
    """(min, max) tilt in degrees: the options, else a dataset's recorded range, else ±60."""
    if args.tilt_max_deg is None and recorded is not None:
        return recorded
    high = 60.0 if args.tilt_max_deg is None else args.tilt_max_deg
    return (-high if args.tilt_min_deg is None else args.tilt_min_deg), high


def _read_pair(first_path: Path, second_path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Two MRC maps that must share one cubic box and voxel size: (first, second, voxel nm)."""
    from tomosift.io import read_mrc

    first, voxel = read_mrc(first_path)
    second, second_voxel = read_mrc(second_path)
    if first.shape != second.shape or first.shape != (first.shape[0],) * 3:
        raise TomosiftError(f"{second_path}: box {second.shape} differs from {first_path}'s "
                            f"{first.shape} (both must be the same cube)")
    if abs(voxel - second_voxel) > 1e-3 * voxel:
        raise TomosiftError(f"{second_path}: voxel size {second_voxel:g} nm differs from "
                            f"{first_path}'s {voxel:g} nm")
    return first, second, voxel


def _features(args) -> None:
    from tomosift.discovery.features import compute_features, write_features

    feature_set = compute_features(args.source, args.data, args.model, args.split, args.layer,
                                   args.threads, args.device)
    write_features(args.out, feature_set)
    print(f"{args.out}: {feature_set.features.shape[0]} x {feature_set.features.shape[1]} "
          f"{args.source} features")


def _cluster(args) -> None:
    from tomosift.discovery.cluster import agreement, kmeans, size_statistics, write_cluster_table
    from tomosift.discovery.features import read_features

    feature_set = read_features(args.features)
    rows = feature_set.rows(args.split)
    clusters, _ = kmeans(feature_set.features[rows], args.k, args.seed)
    labels = feature_set.labels[rows]
    known = bool(np.all(labels >= 0))
    write_cluster_table(args.out, feature_set.indices[rows], clusters,
                        labels if known else None, feature_set.class_names if known else None)
    stats = size_statistics(np.bincount(clusters, minlength=args.k))
    print(f"{args.out}: {len(rows)} subtomograms in {args.k} clusters, sizes {stats['min']}-"
          f"{stats['max']} (coefficient of variation {stats['cv']:.2f})")
    if known:
        scores = agreement(labels, clusters)
        print(f"against the truth: purity {scores['purity']:.3f}, adjusted Rand "
              f"{scores['adjusted_rand']:.3f}, NMI {scores['nmi']:.3f}")


def _align(args) -> None:
    from tomosift.discovery.align import align
    from tomosift.discovery.rotations import relion_pose, transform_volume
    from tomosift.discovery.wedge import wedge_mask
    from tomosift.io import write_mrc

    reference, moving, voxel = _read_pair(args.reference, args.moving)
    low, high = _tilt_range(args)
    n = reference.shape[0]
    moving_mask = wedge_mask(n, low, high)
    if args.reference_tilt_max_deg is None:
        reference_mask = moving_mask
    else:
        r = args.reference_tilt_max_deg
        reference_mask = wedge_mask(n, -r, r)
    result = align(reference, moving, reference_mask, moving_mask)
    rot, tilt, psi, origin = relion_pose(result.rotation, result.shift_voxels)
    shift = result.shift_voxels
    print(f"rot {rot:.2f} tilt {tilt:.2f} psi {psi:.2f} (RELION ZYZ, degrees; B = A rotated); "
          f"shift x {shift[0]:.2f} y {shift[1]:.2f} z {shift[2]:.2f} voxels; "
          f"constrained correlation {result.score:.4f}")
    if args.out:
        write_mrc(args.out, transform_volume(moving, result.rotation, shift), voxel)
    if args.star:
        _write_pose_star(args.star, args.moving, rot, tilt, psi, origin, voxel, n)


def _write_pose_star(path: Path, image: Path, rot: float, tilt: float, psi: float,
                     origin: np.ndarray, voxel_nm: float, box: int) -> None:
    import pandas as pd

    from tomosift.io import ANGSTROM_PER_NM, relion_optics, write_star

    angstrom = voxel_nm * ANGSTROM_PER_NM
    particles = pd.DataFrame({
        "rlnImageName": [str(image)], "rlnAngleRot": [rot], "rlnAngleTilt": [tilt],
        "rlnAnglePsi": [psi], "rlnOriginXAngst": [origin[0] * angstrom],
        "rlnOriginYAngst": [origin[1] * angstrom], "rlnOriginZAngst": [origin[2] * angstrom],
        "rlnOpticsGroup": [1]})
    write_star(path, {"optics": relion_optics(voxel_nm, box), "particles": particles})


def _average(args) -> None:
    from tomosift.classify.devices import limited_threads
    from tomosift.discovery.classify3d import ClassifySettings, classify, write_classification
    from tomosift.discovery.cluster import subset_indices
    from tomosift.discovery.particles import load_particles

    indices = subset_indices(args.subset) if args.subset else None
    particles = load_particles(args.data, indices, args.invert)
    low, high = _tilt_range(args, particles.tilt_range_deg)
    settings = ClassifySettings(args.classes, args.iterations, low, high, args.seed,
                                workers=args.threads or 1)
    with limited_threads(args.threads):
        result = classify(particles.volumes, settings,
                          observations=particles.observations((low, high)))
    names = ([particles.class_names[i] for i in particles.labels]
             if particles.labels is not None else None)
    write_classification(args.out_dir, result, particles.ids, particles.voxel_size_nm, names)
    sizes = np.bincount(result.classes, minlength=args.classes)
    print(f"{args.out_dir}: {len(particles.ids)} subtomograms in {args.classes} classes "
          f"(sizes {', '.join(str(s) for s in sizes)}), mean score "
          f"{result.history[-1].mean_score:.4f} after {args.iterations} iterations")
    for c in range(args.classes):
        print(f"class {c + 1}: gold-standard resolution (half-set FSC 0.143) "
              f"{result.resolution_nm(c, particles.voxel_size_nm):.2f} nm")


def _fsc(args) -> None:
    from tomosift.discovery.align import align
    from tomosift.discovery.fsc import compute_fsc, plot_fsc, soft_sphere_mask, write_fsc_table
    from tomosift.discovery.rotations import transform_volume

    first, second, voxel = _read_pair(args.first, args.second)
    if args.align:
        result = align(first, second, None, None)
        second = transform_volume(second, result.rotation, result.shift_voxels)
    mask = soft_sphere_mask(first.shape[0]) if args.mask == "soft-sphere" else None
    fsc = compute_fsc(first, second, voxel, mask, args.mask)
    print(f"{fsc.summary_line()} (mask: {fsc.mask}{', after alignment' if args.align else ''})")
    if args.out:
        write_fsc_table(args.out, fsc.shells, fsc.fsc, fsc.box_voxels, voxel)
        plot_fsc(args.out.with_suffix(".png"), {f"{args.first.name} vs {args.second.name}": (
            fsc.shells, fsc.fsc)}, fsc.box_voxels, voxel, f"mask: {fsc.mask}")
