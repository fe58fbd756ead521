"""Where would other threshold rules put the census count? Read from a finished census, no
new alignment.

A census stores its calibration ratios (``census.json``), every subset pair's ratio
(``similarity.tsv``) and the count each threshold gives (``structures_by_threshold.tsv``,
the merges followed on past the threshold down to the median pair ratio). This script
computes the threshold of a few rules from those numbers and reads off the count each gives:

- ``midway`` (the census's rule): halfway between the calibration pairs' 10% quantile and the
  median of all pair ratios;
- ``same level``: the calibration pairs' 10% quantile alone;
- ``same level, robust``: the calibration pairs' median minus 3 robust standard deviations
  (1.4826 x their median absolute deviation), so that one failed refinement among the pairs
  does not set the level;
- ``calibration median``;
- ``all pairs q95 / q99``: an upper quantile of all pair ratios (a different-structure tail,
  for data with few pairs of one structure).

With ``--splits DIR`` (a census folder whose every subset was split: a ``pooled`` or
``per_subset`` run) it adds the ``pooled`` rule at several quantiles of all the splits' ratios
(read from a pooled run's ``census.json``, or aligned afresh from the cached split averages
``subsets/subset_NNN_{a,b}_half{1,2}.mrc``): how far the count moves with the quantile.

With ``--truth N`` it also prints the thresholds that give N +- 2 structures. It judges
rules on one dataset; it does not choose one.

    python benchmarks/census_rules.py --census results/benchmarks/census_fold4/census --truth 23 \\
        [--splits results/benchmarks/census_fold4_per_subset/census]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def rule_thresholds(calibration: np.ndarray, pair_ratios: np.ndarray) -> dict[str, float]:
    """Each rule's threshold from the calibration ratios and all pair ratios (1-D)."""
    median = float(np.median(calibration))
    spread = 1.4826 * float(np.median(np.abs(calibration - median)))
    level = float(np.quantile(calibration, 0.1))
    return {
        "midway (census)": 0.5 * (level + float(np.median(pair_ratios))),
        "same level (q10)": level,
        "same level, robust (median - 3 sd)": median - 3.0 * spread,
        "calibration median": median,
        "all pairs q95": float(np.quantile(pair_ratios, 0.95)),
        "all pairs q99": float(np.quantile(pair_ratios, 0.99)),
    }


def split_ratios(folder: Path, workers: int = 2) -> np.ndarray:
    """(P,) the ratios of every subset's split in a census folder: a pooled run's
    calibration ratios, or the cached split averages aligned afresh."""
    from tomosift.discovery.census import CensusSettings, SubsetAverage, calibration_ratios
    from tomosift.io import read_mrc

    info = json.loads((folder / "census.json").read_text())
    if info["settings"].get("calibration") == "pooled":
        ratios = np.asarray(info["calibration_ratios"], dtype=float)
        return ratios[np.isfinite(ratios)]

    def average(stem: str) -> SubsetAverage:
        halves = [read_mrc(folder / "subsets" / f"{stem}_half{h}.mrc")[0] for h in (1, 2)]
        coverage = np.load(folder / "subsets" / f"{stem}_coverage.npy")
        return SubsetAverage(np.stack(halves), coverage, 1, [0])

    stems = sorted(p.name.removesuffix("_a_half1.mrc")
                   for p in (folder / "subsets").glob("subset_*_a_half1.mrc"))
    pairs = [(average(f"{stem}_a"), average(f"{stem}_b")) for stem in stems]
    ratios = calibration_ratios(pairs, CensusSettings(workers=workers))
    return ratios[np.isfinite(ratios)]


def count_at(steps: pd.DataFrame, threshold: float) -> int:
    """Structures the census gives at ``threshold`` (steps: threshold, structures; a count
    holds for thresholds at or below its step)."""
    at = steps[steps.threshold >= threshold]
    return int(at.structures.iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--census", type=Path, required=True, help="a census output folder")
    parser.add_argument("--truth", type=int, help="the true number of structures")
    parser.add_argument("--splits", type=Path,
                        help="a census folder of the same subsets with every subset split")
    parser.add_argument("--quantiles", type=float, nargs="+",
                        default=[0.02, 0.05, 0.1, 0.2, 0.3])
    args = parser.parse_args()
    info = json.loads((args.census / "census.json").read_text())
    calibration = np.asarray(info["calibration_ratios"], dtype=float)
    similarity = pd.read_csv(args.census / "similarity.tsv", sep="\t", index_col=0).to_numpy()
    pair_ratios = similarity[np.triu_indices(similarity.shape[0], 1)]
    pair_ratios = pair_ratios[np.isfinite(pair_ratios)]
    steps = pd.read_csv(args.census / "structures_by_threshold.tsv", sep="\t")
    lowest = float(steps.threshold.min())
    print(f"census {args.census}: {len(calibration)} calibration ratios "
          f"({', '.join(f'{r:.3f}' for r in sorted(calibration))}); {pair_ratios.size} pairs; "
          f"counts known down to {lowest:.3f}")
    rules = rule_thresholds(calibration, pair_ratios)
    if args.splits:
        splits = split_ratios(args.splits)
        print(f"splits of every subset ({args.splits}): {splits.size} ratios, median "
              f"{np.median(splits):.3f}")
        rules |= {f"pooled, splits q{q:g}": float(np.quantile(splits, q))
                  for q in args.quantiles}
    for rule, threshold in rules.items():
        count = count_at(steps, threshold) if threshold >= lowest else "below the curve"
        print(f"  {rule:36s} threshold {threshold:.3f}  structures {count}")
    if args.truth:
        near = steps.index[(steps.structures - args.truth).abs() <= 2]
        if near.empty:
            print(f"  no threshold gives {args.truth} +- 2")
            return
        # a row's count holds from its threshold down to (not including) the next row's
        below = (float(steps.threshold[near.max() + 1]) if near.max() + 1 in steps.index
                 else lowest)
        print(f"  {args.truth} +- 2 structures: thresholds above {below:.3f} up to "
              f"{float(steps.threshold[near.min()]):.3f}")

if __name__ == "__main__":
    main()
