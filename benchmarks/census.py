"""Structure census against the truth: does it count the structures, find the held-out ones
and call them novel?

Takes the k-means clusters of a leave-one-out run
(``results/leave_one_out/<dataset>/clusters/<source>/fold_<f>.tsv``: the test particles of
the dataset, clustered on the features of the network trained without fold f), writes them as
a subdivision folder, runs ``tomosift census`` with the maps of the classes the network was
trained on as references, and prints:

- structures found against the classes present (the empty class counts as one);
- adjusted Rand index of the census partition (members of unresolved subsets as their own
  label) against the true classes;
- each held-out class: found as one structure (at least half its members in one structure
  whose majority it is) and flagged novel?
- known classes falsely flagged novel (a novel structure whose majority is a training class);
- each structure's majority class, purity, resolution and reference score.

    TOMOSIFT_STRUCTURE_DIRS=../shared/structures:../shared/maps python benchmarks/census.py \\
        --loo-dir results/leave_one_out/dose80_tilt60 --source dsrf3d-bin2-embedding --fold 1 \\
        --data results/datasets/dose80_tilt60.h5 --densities results/densities \\
        --out-dir results/benchmarks/census_fold1 [--max-members 50 (0: all)] [--threads 2]
        [--threshold auto|calibrated|R] [--calibration per_subset|pooled]

``--oracle-chunks N`` replaces the clusters by a perfect subdivision: each true class's test
members split at random into N subsets. It asks what the census itself can do when every
subset is pure: which structures the data let it tell apart, and where the threshold falls.

A training-free source (``rif``, ``posenorm``: ``clusters/<source>.tsv``) serves every fold.
``--references all`` compares every structure with all the classes' maps
(``reference_scores.tsv``) and then judges known or novel for every fold at once, each fold's
references being the classes its network was trained on: the score of each structure's true
class against the best other class says how well the reference test separates them.
With ``--references all`` each structure is also scored against every map four ways
(:func:`reference_variants`), each judged for every fold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_line
from sklearn.metrics import adjusted_rand_score

from tomosift.cli.subdivide import parse_threshold
from tomosift.discovery.align import align_prepared, prepare
from tomosift.discovery.census import (
    FIXED_THRESHOLD,
    MIN_RESOLVED_SHELLS,
    CensusSettings,
    _map,
    agreement_ratio,
    expected_correlation,
    masked_fsc,
)
from tomosift.discovery.fsc import fsc_curve, soft_sphere_mask
from tomosift.discovery.refine import last_shell_above
from tomosift.discovery.rotations import transform_volume
from tomosift.io import read_mrc
from tomosift.subdivide.census import census


def oracle_clusters(table: pd.DataFrame, chunks: int, seed: int = 1) -> pd.DataFrame:
    """The same particles with each true class split at random into ``chunks`` clusters."""
    rng = np.random.default_rng(seed)
    cluster = np.empty(len(table), dtype=np.int64)
    for number, name in enumerate(sorted(table["class"].unique())):
        rows = np.flatnonzero((table["class"] == name).to_numpy())
        cluster[rng.permutation(rows)] = number * chunks + np.arange(rows.size) % chunks
    return table.assign(cluster=cluster)


def subdivision_folder(clusters_tsv: Path, data: Path, out: Path, oracle_chunks: int = 0
                       ) -> Path:
    """A subdivision folder (clusters.tsv numbered from 1, subdivide.json) of LOO clusters
    (or, with ``oracle_chunks``, of the true classes split in that many subsets each)."""
    table = pd.read_csv(clusters_tsv, sep="\t")
    if oracle_chunks:
        table = oracle_clusters(table, oracle_chunks)
    folder = out / "subdivision"
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"index": table["index"], "cluster": table["cluster"] + 1
                          - table["cluster"].min(), "distance": 0.0, "class": table["class"]})
    text = frame.to_csv(sep="\t", index=False)
    target = folder / "clusters.tsv"
    if not target.is_file() or target.read_text() != text:  # a rerun reuses the averages
        target.write_text(text)
    (folder / "subdivide.json").write_text(json.dumps({"data": str(data)}) + "\n")
    return folder


def ratio_separation(similarity_tsv: Path, clusters: pd.DataFrame) -> str:
    """How the same-structure ratio separates subsets of one majority class from subsets of
    different ones: a line of quantiles."""
    matrix = pd.read_csv(similarity_tsv, sep="\t", index_col=0)
    matrix.columns = matrix.columns.astype(int)
    majority = clusters.groupby("cluster")["class"].agg(lambda names: names.mode()[0])
    same, different = [], []
    for i in matrix.index:
        for j in matrix.columns:
            if i < j and np.isfinite(matrix.loc[i, j]):
                (same if majority[i] == majority[j] else different).append(matrix.loc[i, j])
    same_q = np.quantile(same, [0.1, 0.5]) if same else [np.nan] * 2
    diff_q = np.quantile(different, [0.5, 0.9, 0.99, 1.0]) if different else [np.nan] * 4
    return (f"pair ratios, same majority class ({len(same)} pairs): 10% {same_q[0]:.3f}, median "
            f"{same_q[1]:.3f}; different ({len(different)}): median {diff_q[0]:.3f}, 90% "
            f"{diff_q[1]:.3f}, 99% {diff_q[2]:.3f}, max {diff_q[3]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loo-dir", type=Path, default=Path("results/leave_one_out/dose80_tilt60"))
    parser.add_argument("--source", default="dsrf3d-bin2-embedding")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--densities", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--max-members", type=int, default=50, help="0 = every member")
    parser.add_argument("--min-members", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=parse_threshold, default="auto",
                        help="auto (default), calibrated, or a fixed merge threshold")
    parser.add_argument("--calibration", choices=("best_resolved", "per_subset", "pooled"),
                        default="best_resolved",
                        help="one same-structure level, or each pair held to its subsets' own")
    parser.add_argument("--oracle-chunks", type=int, default=0,
                        help="subsets = each true class split in this many (0: the clusters)")
    parser.add_argument("--references", choices=("known", "all"), default="known",
                        help="known: the fold's training classes' maps; all: every class's "
                             "map, novelty then judged for every fold")
    args = parser.parse_args()

    print(machine_line())
    folds = pd.read_csv(args.loo_dir / "folds.tsv", sep="\t")
    held_out = sorted(folds.loc[folds["fold"] == args.fold, "class"])
    known = sorted(set(folds["class"]) - set(held_out))
    named = sorted(folds["class"]) if args.references == "all" else known
    references = [args.densities / f"{name}.mrc" for name in named]
    clusters = args.loo_dir / "clusters" / args.source / f"fold_{args.fold}.tsv"
    if not clusters.is_file():  # a training-free source: one clustering for every fold
        clusters = args.loo_dir / "clusters" / f"{args.source}.tsv"
    folder = subdivision_folder(clusters, args.data, args.out_dir, args.oracle_chunks)
    started = time.time()
    settings = CensusSettings(min_members=args.min_members, max_members=args.max_members or None,
                              threshold=args.threshold, calibration=args.calibration,
                              workers=args.threads)
    result = census(folder, args.out_dir / "census", references, settings)
    seconds = time.time() - started
    truth = pd.read_csv(folder / "clusters.tsv", sep="\t")
    members = pd.read_csv(args.out_dir / "census/members.tsv", sep="\t").merge(
        truth[["index", "class"]], on="index")
    table = result.table
    present = members["class"].nunique()
    labels = np.where(members["structure"] > 0, members["structure"],
                      -members["subset"])  # unresolved subsets as their own labels
    ari = adjusted_rand_score(members["class"], labels)
    print(f"source {args.source}, fold {args.fold}: held out {', '.join(held_out)}; "
          f"{len(known)} known classes as references; max {args.max_members} members per "
          f"subset average, min {args.min_members}"
          + (f"; oracle subsets: each class in {args.oracle_chunks}" if args.oracle_chunks
             else ""))
    print(f"structures found: {len(table)} (classes present: {present}); unresolved subsets: "
          f"{len(result.unresolved)}; threshold {result.merged.threshold:.3f} "
          f"({result.merged.rule}; calibrated {result.merged.calibrated_threshold:.3f}); ARI "
          f"{ari:.3f}; census {seconds / 60:.1f} min")
    rows = []
    for row in table.itertuples():
        inside = members[members["structure"] == row.structure]["class"]
        majority = inside.mode()[0]
        rows.append({"structure": row.structure, "subsets": len(str(row.subsets).split(",")),
                     "particles": row.particles, "majority": majority,
                     "purity": round(float((inside == majority).mean()), 3),
                     "resolution_nm": row.resolution_nm, "nearest": row.nearest_reference,
                     "score": row.reference_score, "novel": row.novel,
                     "held_out": majority in held_out})
    structures = pd.DataFrame(rows)
    print(structures.to_string(index=False))
    for name in held_out:
        of_class = members[members["class"] == name]
        counts = of_class["structure"].value_counts()
        best = int(counts.index[0])
        share = counts.iloc[0] / len(of_class)
        row = structures[structures["structure"] == best]
        one = bool(best > 0 and share >= 0.5 and (row["majority"] == name).all())
        novel = bool(one and row["novel"].all())
        print(f"held-out {name}: {share:.0%} of its members in structure {best}; found as one "
              f"structure: {one}; flagged novel: {novel}")
    false_novel = sorted(set(structures.loc[structures["novel"] & ~structures["held_out"],
                                            "majority"]) - {"empty"})
    print(f"known classes falsely flagged novel: {len(false_novel)} ({', '.join(false_novel)})")
    print(ratio_separation(args.out_dir / "census/similarity.tsv", truth))
    steps = result.merged.structures_by_threshold()
    print(f"structures by threshold (down to {result.merged.followed_to:.3f}): " + ", ".join(
        f"{count} at <= {step:.3f}" for step, count in steps[1:]))
    near = [step for step, count in steps[1:] if abs(count - present) <= 2]
    print(f"thresholds that give {present} +- 2 structures: "
          + (f"{min(near):.3f} to {max(near):.3f} (step tops)" if near else "none followed"))
    structures.to_csv(args.out_dir / "structures_vs_truth.tsv", sep="\t", index=False)
    if args.references == "all":
        maps = {name: read_mrc(path)[0] for name, path in zip(named, references, strict=True)}
        variants = reference_variants(result.merged.structures, maps, settings)
        variants.update({name: frame.set_axis(table["structure"].to_list())
                         for name, frame in variants.items()})
        for name, frame in variants.items():
            frame.round(4).to_csv(args.out_dir / f"reference_{name}.tsv", sep="\t",
                                  index_label="structure")
            level = FIXED_THRESHOLD if name.startswith("ratio") else (
                1.0 / settings.reference_resolution_factor)
            print(f"== {name} (a reference explains a structure at >= {level:.3f})")
            print(separation_lines(structures, frame))
            for fold in sorted(folds["fold"].unique()):
                print(novelty_line(fold, structures, members, frame, folds, level))


def shells_observed(coverage: np.ndarray) -> np.ndarray:
    """(n // 2 + 1,) how many Fourier coefficients of each shell a coverage (rfftn layout)
    observed."""
    n = coverage.shape[0]
    k = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.floor(radius + 0.5).astype(np.int64)
    inside = shell <= n // 2
    return np.bincount(shell[inside], weights=(coverage[inside] > 0).astype(np.float64),
                       minlength=n // 2 + 1)


def reference_variants(structures: list, maps: dict[str, np.ndarray], settings: CensusSettings
                       ) -> dict[str, pd.DataFrame]:
    """Every structure against every map, aligned once per pair, scored four ways:
    ``score_full`` / ``score_observed``: the census's reference score (last shell of FSC >=
    0.5 over the structure's last resolved shell) with the FSC over every Fourier
    coefficient / over those the structure observed (a shell with none observed passes);
    ``ratio_full`` / ``ratio_observed`` (shells with none observed left out):
    that FSC summed over the resolved shells over the sum of the perfect-model expectation
    ``sqrt(2F/(1+F))`` of the structure's half-maps (the same-structure ratio with a perfect
    second map)."""
    names = list(maps)
    prepared = {name: prepare(volume, None, settings.align) for name, volume in maps.items()}

    def row(structure) -> list[tuple[float, float, float, float]]:
        values = []
        top = structure.resolved_shell
        expected = expected_correlation(structure.half_fsc)
        for name in names:
            if top < MIN_RESOLVED_SHELLS:
                values.append((np.nan,) * 4)
                continue
            alignment = align_prepared(structure.prepared(settings.align), prepared[name],
                                       settings.align)
            turned = transform_volume(maps[name], alignment.rotation, alignment.shift_voxels)
            full = masked_fsc(structure.average, turned)
            seen = fsc_curve(structure.average, turned, soft_sphere_mask(turned.shape[0]),
                             structure.coverage)[1]
            # a shell the average never observed (the CTF's lowest, for one) says nothing:
            # it passes the score and leaves the ratio's sums
            blind = shells_observed(structure.coverage) == 0
            values.append((last_shell_above(full, 0.5) / top,
                           last_shell_above(np.where(blind, 1.0, seen), 0.5) / top,
                           agreement_ratio(full, expected, top),
                           agreement_ratio(np.where(blind, 0.0, seen),
                                           np.where(blind, 0.0, expected), top)))
        return values

    rows = _map(row, list(structures), settings.workers)
    kinds = ("score_full", "score_observed", "ratio_full", "ratio_observed")
    return {kind: pd.DataFrame([[cell[k] for cell in r] for r in rows], columns=names)
            for k, kind in enumerate(kinds)}


def separation_lines(structures: pd.DataFrame, scores: pd.DataFrame) -> str:
    """Per structure of purity >= 0.5 with a real class: its true class's reference score
    against the best other class's; and how many have the true one ahead."""
    lines, ahead = [], 0
    rows = structures[(structures["purity"] >= 0.5) & (structures["majority"] != "empty")]
    for row in rows.itertuples():
        own = scores.loc[row.structure]
        true = float(own.get(row.majority, np.nan))
        others = own.drop(row.majority, errors="ignore")
        best_other = others.idxmax()
        ahead += true > float(others.max())
        lines.append(f"  structure {row.structure} ({row.majority}, purity {row.purity}): true "
                     f"{true:.3f}, best other {best_other} {float(others.max()):.3f}")
    return (f"reference scores, true class vs best other ({len(rows)} structures of purity "
            f">= 0.5; true ahead in {ahead}):\n" + "\n".join(lines))


def novelty_line(fold: int, structures: pd.DataFrame, members: pd.DataFrame,
                 scores: pd.DataFrame, folds: pd.DataFrame, level: float) -> str:
    """Known or novel with the references of fold ``fold`` (the other folds' classes): each
    held-out class found as one structure and flagged novel; known classes flagged novel."""
    held_out = set(folds.loc[folds["fold"] == fold, "class"])
    known = [c for c in scores.columns if c not in held_out]
    best = scores[known].max(axis=1)
    novel = {s: not best[s] >= level for s in scores.index}
    found, flagged = [], []
    for name in sorted(held_out):
        counts = members.loc[members["class"] == name, "structure"].value_counts()
        top = int(counts.index[0])
        row = structures[structures["structure"] == top]
        if top > 0 and counts.iloc[0] / counts.sum() >= 0.5 and (row["majority"] == name).all():
            found.append(name)
            if novel.get(top, False):
                flagged.append(name)
    false = sorted({r.majority for r in structures.itertuples()
                    if r.majority not in held_out | {"empty"} and novel.get(r.structure, False)
                    and np.isfinite(best.get(r.structure, np.nan))})
    return (f"fold {fold} (held out {len(held_out)}): found as one {len(found)}, flagged novel "
            f"{len(flagged)} ({', '.join(flagged)}); known falsely novel {len(false)} "
            f"({', '.join(false)})")


if __name__ == "__main__":
    main()
