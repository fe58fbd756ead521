"""Held-out folds of the leave-one-out experiment: which classes each network never sees.

The paper trains one network per left-out class (22 trainings per architecture). With
``leave_one_out.folds: K`` the left-out classes are split into K folds instead, and network f
is trained without every class of fold f; each class is then recovered from its own fold's
network. So that every fold holds small and large complexes alike (a fold of only small
complexes would be much harder than one of only large ones), the classes are split by mass
(:func:`assign_folds`).

The fold table (``folds.tsv``: ``class``, ``fold`` (1-based), ``mass_kda``) is written by the
workflow's checkpoint ``loo_folds`` from the density JSONs and read by the trainings and
recoveries (:func:`read_folds`, :func:`fold_classes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from tomosift.errors import TomosiftError
from tomosift.io import atomic_path

FOLD_COLUMNS = ("class", "fold", "mass_kda")


def assign_folds(masses: Mapping[str, float], k: int) -> dict[str, int]:
    """Split classes into ``k`` folds balanced by mass: {class: fold (1-based)}.

    The classes are sorted by mass (ties by name) and dealt in snake order (folds 1..k, then
    k..1, ...), which gives fold sizes differing by at most one and similar total masses. The
    dealing takes the k lightest classes first and the k heaviest second, then the rest from
    light to heavy, so that every fold holds one of the k lightest and one of the k heaviest
    classes: when k <= n / 4 each fold's mass range reaches below the first and above the
    third quartile of all masses. ``k`` equal to the number of classes gives one class per
    fold (lightest first); ``k`` = 1 puts every class in one fold.
    """
    names = sorted(masses, key=lambda name: (float(masses[name]), name))
    n = len(names)
    if not 1 <= k <= n:
        raise TomosiftError(f"{k} folds for {n} classes: need 1 <= folds <= {n}")
    if n >= 2 * k:  # lightest k, heaviest k, then the middle, light to heavy
        order = [*names[:k], *names[n - k:], *names[k:n - k]]
    else:
        order = names
    folds = {}
    for position, name in enumerate(order):
        round_, offset = divmod(position, k)
        folds[name] = (offset if round_ % 2 == 0 else k - 1 - offset) + 1
    return folds


def one_class_per_fold(classes: Sequence[str]) -> dict[str, int]:
    """The paper's protocol: fold f is the f-th left-out class (in the config's order)."""
    return {name: fold for fold, name in enumerate(classes, start=1)}


def fold_table(classes: Sequence[str], masses: Mapping[str, float],
               k: int | None) -> pd.DataFrame:
    """The fold table of ``classes``: :func:`assign_folds` with ``k`` folds, or one class per
    fold with ``k`` None. Sorted by fold, then mass."""
    chosen = {name: float(masses[name]) for name in classes}
    folds = one_class_per_fold(classes) if k is None else assign_folds(chosen, k)
    table = pd.DataFrame({"class": list(classes), "fold": [folds[n] for n in classes],
                          "mass_kda": [chosen[n] for n in classes]})
    return table.sort_values(["fold", "mass_kda", "class"]).reset_index(drop=True)


def write_folds(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a fold table (TSV)."""
    with atomic_path(path) as tmp:
        table[list(FOLD_COLUMNS)].to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a fold table written by :func:`write_folds`."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    table = pd.read_csv(path, sep="\t", dtype={"class": str})
    missing = [c for c in FOLD_COLUMNS if c not in table.columns]
    if missing:
        raise TomosiftError(f"{path}: not a fold table (no {', '.join(missing)})")
    return table


def fold_classes(path: str | os.PathLike, fold: int) -> list[str]:
    """The classes of one fold (those its network must never see)."""
    table = read_folds(path)
    classes = table.loc[table["fold"] == int(fold), "class"].tolist()
    if not classes:
        raise TomosiftError(f"{path}: no fold {fold}")
    return classes


def fold_of(path: str | os.PathLike, name: str) -> int:
    """The fold of one class."""
    table = read_folds(path)
    match = table.loc[table["class"] == name, "fold"]
    if match.empty:
        raise TomosiftError(f"{path}: class {name} is in no fold")
    return int(match.iloc[0])
