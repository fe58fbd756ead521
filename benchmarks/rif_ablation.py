"""Where the RIF-SVM's accuracy comes from: the radial power spectrum or the angular shape.

Computes the rotation-invariant features of a dataset's train and test splits once, then fits
the RIF-SVM (C and gamma cross-validated on the train split) on subsets of the features:

- all: every shell and degree (the baseline as the workflow runs it);
- radial: degree 0 only, P(r, 0), the spherically averaged power spectrum of the subtomogram;
- angular: degrees >= 2 only;
- angular / radial: degrees >= 2 divided by P(r, 0) of their shell (shape without the
  spectrum's radial profile);
- low shells: every degree on the shells up to 0.45 Nyquist only (radius <= 9 of 20 for a 40³
  box), as if the subtomograms had been low-pass filtered there, as the simulation code of the
  paper's lineage does (its band-pass threshold is a quarter of the box radius in 1/nm
  divided by Nyquist); high shells: the rest.

    python benchmarks/rif_ablation.py results/benchmarks/table1_small/snr0.1_tilt60.h5
    python benchmarks/rif_ablation.py DATA.h5 --only radial angular   # two subsets only
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from tomosift.classify.inputs import read_split
from tomosift.classify.rif import RifSettings, RifSvm, features_from_dataset
from tomosift.datasets import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="a tomosift HDF5 dataset")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="fit only the subsets whose names start with these words "
                             "(each fit of a hard dataset takes minutes)")
    args = parser.parse_args()
    settings = RifSettings()
    splits = {name: read_split(args.data, name) for name in ("train", "test")}
    with open_dataset(args.data) as h5:
        features = {name: features_from_dataset(h5, split.indices, settings, progress=False)
                    for name, split in splits.items()}
    n_degrees = len(settings.degrees)

    def subsets(matrix: np.ndarray) -> dict[str, np.ndarray]:
        shells = matrix.reshape(len(matrix), -1, n_degrees)  # shell-major layout
        radial = shells[:, :, :1]
        angular = shells[:, :, 1:]
        low = int(0.45 * shells.shape[1])  # shells are radii 1 .. n/2
        return {
            "all": matrix,
            "radial (degree 0)": radial.reshape(len(matrix), -1),
            "angular (degrees >= 2)": angular.reshape(len(matrix), -1),
            "angular / radial": (angular / np.maximum(radial, 1e-12)).reshape(len(matrix), -1),
            f"low shells (r <= {low})": shells[:, :low].reshape(len(matrix), -1),
            f"high shells (r > {low})": shells[:, low:].reshape(len(matrix), -1),
            f"radial, low shells (r <= {low})": radial[:, :low].reshape(len(matrix), -1),
        }

    train, test = subsets(features["train"]), subsets(features["test"])
    print(f"machine: {platform.machine()}, {platform.processor()}")
    print(f"{args.data}: {len(splits['train'].labels)} train, {len(splits['test'].labels)} test, "
          f"{len(np.unique(splits['train'].labels))} classes")
    print("features                  n_features  test_accuracy")
    for name in train:
        if args.only and not any(name.startswith(f"{word} ") or name == word
                                 for word in args.only):
            continue
        classifier = RifSvm().fit(train[name], splits["train"].labels)
        accuracy = float(np.mean(classifier.predict(test[name]) == splits["test"].labels))
        print(f"{name:25s} {train[name].shape[1]:10d}  {accuracy:13.3f}")


if __name__ == "__main__":
    main()
