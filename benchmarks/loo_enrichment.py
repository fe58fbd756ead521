"""The first half of the leave-one-out protocol for every class and feature source: how pure
the cluster is where each left-out class is most enriched, and where the novelty ranking puts
it. No classification or averaging: it needs only a workflow run's features and clusters.

Reads a leave-one-out folder of the workflow (``results/leave_one_out/<dataset>``):
``folds.tsv``, the feature and cluster files of each CNN source per fold
(``features/<source>/fold_<f>.h5``, ``clusters/<source>/fold_<f>.tsv``) and of the
training-free sources (``features/rif.h5``, ``clusters/rif.tsv``). Prints, per class and
source: fold, the oracle cluster's size, the fraction of it that is the class (purity) and of
the class it holds, and its novelty rank; per source: the median purity, classes with purity
>= 0.5, the oracle cluster ranked in the top 3, the adjusted Rand index of the fold's
clustering against the truth, and the cluster-size CV. Writes ``enrichment.tsv`` and
``enrichment_counts.tsv`` beside (``enrichment_folds1-4.tsv``, ... with ``--folds``).

    python benchmarks/loo_enrichment.py --loo-dir results/leave_one_out/dose80_tilt60 \\
        [--folds 1 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.discovery.cluster import (
    agreement,
    enrichment,
    most_enriched_cluster,
    read_cluster_table,
    size_statistics,
)
from tomosift.discovery.features import read_features
from tomosift.discovery.folds import read_folds
from tomosift.discovery.leave_one_out import novelty_scores


def sources_of(loo_dir: Path) -> dict[str, bool]:
    """Feature sources found: {name: per fold (a CNN) or not}."""
    found = {}
    for path in sorted((loo_dir / "clusters").iterdir()):
        if path.is_dir() and any(path.glob("fold_*.tsv")):
            found[path.name] = True
        elif path.suffix == ".tsv":
            found[path.stem] = False
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loo-dir", type=Path, default=Path("results/leave_one_out/dose80_tilt60"))
    parser.add_argument("--top", type=int, default=3, help="novelty ranks counted as found")
    parser.add_argument("--folds", type=int, nargs="+",
                        help="only these folds (a run whose other folds are not trained yet)")
    args = parser.parse_args()
    folds = read_folds(args.loo_dir / "folds.tsv")
    if args.folds:
        folds = folds[folds["fold"].isin(args.folds)]
    rows, counts = [], []
    for source, per_fold in sources_of(args.loo_dir).items():
        aris, cvs = [], []
        for fold, group in folds.groupby("fold"):
            stem = f"{source}/fold_{fold}" if per_fold else source
            feature_path = args.loo_dir / "features" / f"{stem}.h5"
            clusters = read_cluster_table(args.loo_dir / "clusters" / f"{stem}.tsv")
            feature_set = read_features(feature_path)
            names = feature_set.class_names
            labels = clusters["label"].to_numpy()
            assigned = clusters["cluster"].to_numpy()
            aris.append(agreement(labels, assigned)["adjusted_rand"])
            cvs.append(size_statistics(clusters["cluster"].value_counts().to_numpy())["cv"])
            training = feature_set.attrs.get("training_classes") or [
                n for n in names if n not in set(group["class"])]
            novelty = novelty_scores(feature_set, clusters, training)
            for name in group["class"]:
                target = names.index(name)
                oracle = most_enriched_cluster(labels, assigned, target)
                table = enrichment(labels, assigned, target)
                row = table[table["cluster"] == oracle].iloc[0]
                rows.append({
                    "class": name, "fold": int(fold), "features": source,
                    "mass_kda": float(group.loc[group["class"] == name, "mass_kda"].iloc[0]),
                    "cluster_size": int(row["size"]),
                    "fraction_in_cluster": float(row["fraction_in_cluster"]),
                    "fraction_in_class": float(row["fraction_in_class"]),
                    "novelty_rank": int(novelty.loc[novelty["cluster"] == oracle, "rank"]
                                        .iloc[0]),
                })
            if not per_fold:  # one clustering serves every fold
                aris, cvs = aris[:1], cvs[:1]
        table = pd.DataFrame([r for r in rows if r["features"] == source])
        counts.append({
            "features": source, "classes": len(table),
            "median_purity": float(table["fraction_in_cluster"].median()),
            "purity_ge_0.5": int((table["fraction_in_cluster"] >= 0.5).sum()),
            f"novelty_top{args.top}": int((table["novelty_rank"] <= args.top).sum()),
            "adjusted_rand_mean": float(np.mean(aris)), "cluster_size_cv_mean": float(np.mean(cvs)),
        })
    per_class = pd.DataFrame(rows).sort_values(["mass_kda", "features"])
    summary = pd.DataFrame(counts)
    suffix = "_folds" + "-".join(map(str, args.folds)) if args.folds else ""
    per_class.to_csv(args.loo_dir / f"enrichment{suffix}.tsv", sep="\t", index=False,
                     float_format="%.4g")
    summary.to_csv(args.loo_dir / f"enrichment_counts{suffix}.tsv", sep="\t", index=False,
                   float_format="%.4g")
    pivot = per_class.pivot_table(index=["class", "fold", "mass_kda"], columns="features",
                                  values=["fraction_in_cluster", "novelty_rank"])
    pd.set_option("display.width", 250)
    print(summary.to_string(index=False))
    print()
    print(pivot.sort_index(level="mass_kda").round(2).to_string())


if __name__ == "__main__":
    main()
