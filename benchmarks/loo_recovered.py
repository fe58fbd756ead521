"""The second half of the leave-one-out protocol as far as it ran: every ``row.json`` found
under a leave-one-out folder, one line per (class, feature source), and the success counts
per source under both criteria over the classes every source has. Unlike the ``loo_summary``
rule it needs no complete set of rows, so part of a long run (some folds) can be read.

Prints, per row: fold, the oracle cluster's size and purity, the chosen class's size and
purity, the FSC-0.5 resolution against the truth, ``reference_nm`` (as many true members
averaged alike) and their ratio, both successes, the oracle cluster's novelty rank and the
successes without the oracle. Writes the rows as ``summary_partial.tsv`` in ``--out-dir``.
Both strict successes are judged again from the stored resolutions by today's rule
(:func:`is_strict_success`), so rows written before a change of the rule read alike.

``--novel`` prints what each fold's most novel-looking clusters hold (rule
``loo_novel_cluster``; ``novel/<features>/fold_<f>/rank_<r>/novel.json``): size, novelty, the
class most of its members belong to and its share, and whether that class is one the fold's
network never saw. This is the search without the oracle as a user would see it: how many of
the clusters they would average are new structures at all.

``--masked`` adds a diagnostic: the oracle's recovered average and its reference scored again
against the truth inside a soft sphere around the true particle (its density above 5% of the
maximum, plus 2 voxels, 3-voxel edge) instead of the whole box. The protocol's FSC (the
paper's, unmasked) compares the box's lowest shells too (37 and 18 nm at 40³ x 0.92 nm), where
a small complex's truth holds little power and the average holds neighbours' density.

    python benchmarks/loo_recovered.py --loo-dir results/leave_one_out/dose80_tilt60 \\
        --out-dir /tmp/loo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.discovery.fsc import compute_fsc, soft_sphere_mask
from tomosift.discovery.leave_one_out import is_strict_success, success_counts, summarise
from tomosift.io import read_mrc


def judge_again(table: pd.DataFrame, rows: list[Path]) -> pd.DataFrame:
    """``success_strict`` and (with at most one novel cluster tried, whose figures the row
    keeps) ``novel_success_strict`` by :func:`is_strict_success`."""
    table = table.copy()
    settings = [json.loads(path.read_text())["settings"] for path in rows]
    # each row's own cutoffs, kept for the masked scores too
    table["success_nm"] = [entry["success_nm"] for entry in settings]
    table["strict_factor"] = [entry["strict_factor"] for entry in settings]
    table["success_strict"] = [
        is_strict_success(bool(r.success), r.resolution_nm, r.reference_nm, r.strict_factor)
        for r in table.itertuples()]
    table["novel_success_strict"] = [
        is_strict_success(bool(r.novel_success), r.novel_resolution_nm, r.novel_reference_nm,
                          r.strict_factor)
        if r.novel_clusters_with_class <= 1 else bool(r.novel_success_strict)
        for r in table.itertuples()]
    return table


def particle_mask(truth: np.ndarray) -> np.ndarray:
    """A soft sphere (n, n, n) around the true particle's density (above 5% of its maximum)."""
    n = truth.shape[0]
    grid = np.indices(truth.shape) - n // 2
    radius = np.sqrt((grid**2).sum(axis=0))[truth > 0.05 * truth.max()].max()
    return soft_sphere_mask(n, min(radius + 2.0, n / 2 - 4.0), 3.0)


def masked_scores(table: pd.DataFrame, loo_dir: Path) -> pd.DataFrame:
    """FSC-0.5 resolutions of each row's oracle average and its reference inside
    :func:`particle_mask`, and both successes by them."""
    resolutions, references, paper, strict = [], [], [], []
    for r in table.itertuples():
        truth, voxel = read_mrc(r.truth)
        mask = particle_mask(truth)
        recovered = loo_dir / "recovered" / r.features / r._1 / "oracle" / "average_on_truth.mrc"
        reference = (loo_dir / "references" / r._1 / f"n{int(r.reference_count):05d}"
                     / "average_on_truth.mrc")
        found = compute_fsc(truth, read_mrc(recovered)[0], voxel, mask).resolution_05_nm
        ideal = compute_fsc(truth, read_mrc(reference)[0], voxel, mask).resolution_05_nm
        resolutions.append(found)
        references.append(ideal)
        paper.append(bool(found <= r.success_nm))
        strict.append(is_strict_success(paper[-1], found, ideal, r.strict_factor))
    return pd.DataFrame({"masked_nm": np.round(resolutions, 2),
                         "masked_ref_nm": np.round(references, 2),
                         "masked_paper": paper, "masked_strict": strict}, index=table.index)


def novel_clusters(loo_dir: Path) -> pd.DataFrame:
    """One row per classified novel cluster: features, fold, rank, cluster, size, novelty, the
    dominant true class, its share of the cluster, and whether the fold held it out."""
    from tomosift.discovery.cluster import read_cluster_table

    records = []
    for path in sorted((loo_dir / "novel").glob("*/fold_*/rank_*/novel.json")):
        record = json.loads(path.read_text())
        features, fold = path.parts[-4], int(path.parts[-3].removeprefix("fold_"))
        if record["cluster"] is None:
            continue
        table = loo_dir / "clusters" / features / f"fold_{fold}.tsv"
        if not table.is_file():
            table = loo_dir / "clusters" / f"{features}.tsv"
        clusters = read_cluster_table(table)
        members = clusters[clusters["cluster"] == record["cluster"]]
        shares = members["class"].value_counts(normalize=True)
        records.append({"features": features, "fold": fold, "rank": record["rank"],
                        "cluster": record["cluster"], "size": record["size"],
                        "novelty": round(record["novelty"], 2), "dominant": shares.index[0],
                        "share": round(float(shares.iloc[0]), 2),
                        "unseen": shares.index[0] in record["held_out"],
                        "unseen_share": round(float(members["class"]
                                                    .isin(record["held_out"]).mean()), 2)})
    return pd.DataFrame(records).sort_values(["features", "fold", "rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loo-dir", type=Path, default=Path("results/leave_one_out/dose80_tilt60"))
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--masked", action="store_true",
                        help="also score the oracle averages inside a mask around the particle")
    parser.add_argument("--novel", action="store_true",
                        help="also list what each fold's most novel clusters hold")
    args = parser.parse_args()
    rows = sorted((args.loo_dir / "recovered").glob("*/*/row.json"))
    if not rows:
        raise SystemExit(f"{args.loo_dir / 'recovered'}: no row.json (run loo_recover first)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = judge_again(summarise(rows, args.out_dir / "summary_partial.tsv"), rows)
    # only classes every source recovered, so that the counts compare like with like
    sources = table["features"].nunique()
    complete = table.groupby("class")["features"].transform("nunique") == sources
    table = table[complete].sort_values(["fold", "class", "features"])
    view = pd.DataFrame({
        "class": table["class"], "fold": table["fold"], "features": table["features"],
        "cluster": table["cluster_size"],
        "purity": table["fraction_in_cluster"].round(2),
        "chosen": table["chosen_class_size"],
        "chosen_purity": table["chosen_class_fraction"].round(2),
        "fsc05_nm": table["resolution_nm"].round(2),
        "reference_nm": table["reference_nm"].round(2),
        "ratio": (table["resolution_nm"] / table["reference_nm"]).round(2),
        "paper": table["success"], "strict": table["success_strict"],
        "novelty_rank": table["oracle_novelty_rank"],
        "no_oracle_paper": table["novel_success"],
        "no_oracle_strict": table["novel_success_strict"],
    })
    if args.masked:
        view = view.join(masked_scores(table, args.loo_dir))
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(view.to_string(index=False))
        print(f"\n{table['class'].nunique()} classes recovered by all {sources} sources")
        counts = success_counts(table, "strict")
        print(counts[["features", "classes", "folds", "successes_paper", "successes_strict",
                      "successes_without_oracle_paper", "successes_without_oracle_strict",
                      "oracle_cluster_in_novel_top"]].to_string(index=False))
        if args.masked:
            print("\nwith the oracle, scored inside the particle mask (diagnostic):")
            print(view.groupby("features", sort=False)[["masked_paper", "masked_strict"]]
                  .sum().to_string())
        if args.novel:
            novel = novel_clusters(args.loo_dir)
            novel.to_csv(args.out_dir / "novel_clusters.tsv", sep="\t", index=False)
            print("\nthe most novel-looking clusters of each fold:")
            print(novel.to_string(index=False))
            print("\nper source: clusters whose majority is an unseen class, distinct unseen "
                  "classes among those majorities")
            print(novel.groupby("features").apply(lambda g: pd.Series({
                "clusters": len(g), "unseen_majority": int(g["unseen"].sum()),
                "distinct_unseen": g.loc[g["unseen"], "dominant"].nunique()}),
                include_groups=False).to_string())


if __name__ == "__main__":
    main()
