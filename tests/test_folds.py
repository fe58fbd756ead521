"""Held-out folds of the leave-one-out experiment, balanced by mass."""

from __future__ import annotations

import numpy as np
import pytest

from tomosift.discovery.folds import (
    assign_folds,
    fold_classes,
    fold_of,
    fold_table,
    read_folds,
    write_folds,
)
from tomosift.errors import TomosiftError


def random_masses(n: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"c{i:02d}": float(m) for i, m in enumerate(rng.lognormal(5.5, 1.0, n))}


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 19, 22, 23])
def test_every_class_in_one_fold_and_sizes_balanced(n):
    masses = random_masses(n, seed=n)
    for k in range(1, n + 1):
        folds = assign_folds(masses, k)
        assert set(folds) == set(masses)  # every class exactly once (a dict: one fold each)
        sizes = np.bincount(list(folds.values()), minlength=k + 1)[1:]
        assert set(folds.values()) == set(range(1, k + 1))
        assert sizes.max() - sizes.min() <= 1
        if 4 * k <= n:  # each fold spans the quartiles of all masses
            q1, q3 = np.quantile(list(masses.values()), [0.25, 0.75])
            for fold in range(1, k + 1):
                members = [masses[c] for c, f in folds.items() if f == fold]
                assert min(members) <= q1 and max(members) >= q3, (n, k, fold)


def test_snake_order_on_known_masses():
    masses = {name: float(i) for i, name in enumerate("abcdefgh", start=1)}  # a lightest
    assert assign_folds(masses, 2) == {"a": 1, "b": 2, "g": 2, "h": 1, "c": 1, "d": 2,
                                       "e": 2, "f": 1}
    assert assign_folds(masses, 8) == {n: i for i, n in enumerate("abcdefgh", start=1)}
    assert set(assign_folds(masses, 1).values()) == {1}
    # total masses of the two folds: 1+8+3+6 = 18 and 2+7+4+5 = 18
    with pytest.raises(TomosiftError, match="9 folds for 8 classes"):
        assign_folds(masses, 9)
    with pytest.raises(TomosiftError, match="0 folds"):
        assign_folds(masses, 0)


def test_fold_table_round_trip(tmp_path):
    masses = {"big": 900.0, "small": 60.0, "mid": 300.0, "tiny": 40.0}
    paper = fold_table(["mid", "tiny", "big"], masses, None)  # one class per fold, config order
    assert dict(zip(paper["class"], paper["fold"], strict=True)) == {"mid": 1, "tiny": 2,
                                                                     "big": 3}
    table = fold_table(list(masses), masses, 2)
    write_folds(tmp_path / "folds.tsv", table)
    back = read_folds(tmp_path / "folds.tsv")
    assert list(back.columns) == ["class", "fold", "mass_kda"] and len(back) == 4
    assert sorted(fold_classes(tmp_path / "folds.tsv", 1) + fold_classes(tmp_path / "folds.tsv",
                                                                         2)) == sorted(masses)
    assert fold_of(tmp_path / "folds.tsv", "tiny") == 1
    with pytest.raises(TomosiftError, match="no fold 3"):
        fold_classes(tmp_path / "folds.tsv", 3)
