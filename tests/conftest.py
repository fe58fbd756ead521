"""Shared fixtures. Real structures come from $TOMOSIFT_STRUCTURE_DIRS (``make test`` points it
at ../shared); no test hard-codes where they live."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tomosift.structures import STRUCTURE_DIRS_ENV, find_in_dirs, search_dirs

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Absolute folders, so that tests that change directory still find the structures.
    value = os.environ.get(STRUCTURE_DIRS_ENV, "")
    if value:
        os.environ[STRUCTURE_DIRS_ENV] = ":".join(
            str(Path(d).resolve()) for d in value.split(":") if d.strip()
        )


@pytest.fixture(scope="session")
def structure_path():
    """Look up a structure file by ID in $TOMOSIFT_STRUCTURE_DIRS."""
    dirs = search_dirs()
    if not dirs:
        pytest.fail(f"set {STRUCTURE_DIRS_ENV} to the folders of the test structures "
                    "(make test points it at ../shared/structures:../shared/maps)")

    def lookup(pdb_id: str) -> Path:
        found = find_in_dirs(pdb_id, dirs)
        assert found is not None, f"{pdb_id} not found in {os.environ.get(STRUCTURE_DIRS_ENV)}"
        return found

    return lookup


@pytest.fixture(scope="session")
def small_maps(structure_path):
    """Density maps (40³, 0.92 nm) of two small complexes, computed once per session."""
    from tomosift.density import DensitySettings, make_density

    settings = DensitySettings()
    return {name: make_density(structure_path(name), settings)[0] for name in ("3hhb", "1bxn")}


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
