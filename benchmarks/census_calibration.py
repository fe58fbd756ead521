"""Does the census's same-structure ratio depend on how many members each average holds?

The census calibrates its merge threshold on pairs that are one structure by construction
(two independent averages of one subset's members). Until issue 20's third session those were
two halves of a subset's averaged members, so each held half as many members as the averages
the census then compares. This benchmark measures, per true class of a dataset's test split,
the same-structure ratio (:func:`tomosift.discovery.census.pair_ratio`) of two independent
reference-free averages of ``n`` disjoint members each, for several ``n``, and the ratio
between two classes' averages at the largest ``n`` as the different-structure side:

    python benchmarks/census_calibration.py \\
        --clusters results/leave_one_out/dose80_tilt60/clusters/rif.tsv \\
        --data results/datasets/dose80_tilt60.h5 --classes 1s3x 3hhb 1bxn 4v94 \\
        --counts 25 50 100 [--threads 2] [--seed 1]

``--clusters``: any table with the columns ``index`` (particle of ``--data``) and ``class``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_line

from tomosift.discovery.census import CensusSettings, SubsetAverage, pair_ratio
from tomosift.subdivide.averages import average_members


def independent_groups(members: np.ndarray, count: int, seed: int, number: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted groups of ``count`` members each, drawn with the seed."""
    drawn = np.random.default_rng([seed, number, count]).permutation(members)[: 2 * count]
    return np.sort(drawn[:count]), np.sort(drawn[count:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--counts", nargs="+", type=int, default=[25, 50, 100])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="a TSV of every ratio")
    args = parser.parse_args()

    print(machine_line())
    settings = CensusSettings(workers=args.threads, seed=args.seed)
    table = pd.read_csv(args.clusters, sep="\t")
    rows, largest = [], {}
    for number, name in enumerate(args.classes):
        members = table.loc[table["class"] == name, "index"].to_numpy(dtype=np.int64)
        for count in args.counts:
            if 2 * count > members.size:
                print(f"{name}: {members.size} members, too few for 2 x {count}")
                continue
            started = time.time()
            pair = []
            for group in independent_groups(members, count, args.seed, number):
                result, _ = average_members(args.data, group, settings.iterations, args.seed,
                                            args.threads, False)
                pair.append(SubsetAverage(result.half_maps[0].astype(np.float32),
                                          result.observed(0), count, [number]))
            ratio, _ = pair_ratio(pair[0], pair[1], settings.align)
            rows.append({"class": name, "members": count, "ratio": round(ratio, 4),
                         "resolved_shells": f"{pair[0].resolved_shell},{pair[1].resolved_shell}",
                         "seconds": round(time.time() - started, 1)})
            print("\t".join(str(v) for v in rows[-1].values()), flush=True)
            largest[name] = pair[0]
    frame = pd.DataFrame(rows)
    print(frame.pivot(index="class", columns="members", values="ratio").to_string())
    different = [pair_ratio(largest[a], largest[b], settings.align)[0]
                 for a, b in itertools.combinations(sorted(largest), 2)]
    if different:
        print(f"different classes at each class's largest count ({len(different)} pairs): "
              f"median {np.median(different):.3f}, max {np.max(different):.3f}")
    if args.out:
        frame.to_csv(args.out, sep="\t", index=False)


if __name__ == "__main__":
    main()
