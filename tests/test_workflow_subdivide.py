"""The user's path through Snakemake on a tiny config: simulated tomograms -> picks ->
subtomograms -> features in shards -> subsets as RELION 5 STAR files -> averages -> census."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from test_workflow import digests, snakemake

from tomosift.io import read_mrc
from tomosift.tomograms.relion import read_particles_star

TINY_SUBDIVIDE = """
seed: 4
structures: [3hhb, {source: 1bxn, name: prx}, 3gl1]
simulation:
  noise_model: dose
  dose_e_per_a2: [100]
  tilt_max_deg: [60]
  per_class: 8
  shard_size: 16
classification:
  methods: [dsrf3d-bin2]
  epochs: 1
  batch_size: 8
  precision: float32
  models:
    dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}
subdivide:
  enabled: true
  noise_level: 100
  simulated_tomograms: {count: 2, size_voxels: 96, thickness_voxels: null, particles: 8}
  shards: 2
  k: 3
  averages: 1
  average_members: 5
  average_iterations: 1
  embedding_points: 12
  census: {min_members: 2, max_members: 5, references: training}
"""


@pytest.fixture(scope="module")
def subdivided(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("subdivide")
    (workdir / "config.yaml").write_text(TINY_SUBDIVIDE)
    snakemake(workdir, "subdivide")
    return workdir


def test_tomograms_become_relion_subsets(subdivided):
    results = subdivided / "results/subdivide"
    with h5py.File(results / "particles.h5") as h5:
        n = len(h5["volumes"])
        tomo_names = set(h5["particles/tomo_name"][()].astype(str))
    assert tomo_names == {"simulated01", "simulated02"}
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    assert summary["members"].sum() == n and len(summary) <= 3
    stars = sorted((results / "subsets").glob("cluster_*.star"))
    assert len(stars) == len(summary)
    seen = 0
    for path in stars:
        particles, optics, _ = read_particles_star(path)
        assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(9.2)
        assert int(optics["rlnImageSize"].iloc[0]) == 40
        assert particles["rlnClassNumber"].nunique() == 1
        inside = particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        assert ((inside > 0) & (inside < 96)).all()
        assert {"rlnCenteredCoordinateXAngst", "rlnTomoName"} <= set(particles.columns)
        seen += len(particles)
    assert seen == n
    picking = pd.read_csv(results / "picking.tsv", sep="\t")
    overall = picking[picking["class"] == "all"]
    assert set(overall["tomogram"]) == {"simulated01", "simulated02"}
    assert overall["recall"].between(0, 1).all()
    by_mass = pd.read_csv(results / "picking_by_mass.tsv", sep="\t")
    assert (by_mass["mass_kda"] > 0).all() and by_mass["mass_kda"].is_monotonic_increasing
    assert by_mass["n_picks"].sum() == overall["picks"].sum()
    assert (results / "picking_by_mass.png").stat().st_size > 0
    averages = sorted((results / "averages").glob("cluster_???.mrc"))
    assert len(averages) == 1
    volume, voxel = read_mrc(averages[0])
    assert volume.shape == (40, 40, 40) and voxel == pytest.approx(0.92)
    assert np.isfinite(volume).all() and volume.std() > 0
    # with its gold-standard half-maps and their resolution
    for half in (1, 2):
        assert read_mrc(averages[0].with_name(f"{averages[0].stem}_half{half}.mrc"))[0].std() > 0
    resolution = pd.read_csv(results / "averages/resolution.tsv", sep="\t")
    assert len(resolution) == 1 and resolution["resolution_0143_nm"].iloc[0] >= 2 * 0.92
    # the census: every particle in a subset and a structure (or unresolved), maps per structure
    census = pd.read_csv(results / "census/census.tsv", sep="\t")
    members = pd.read_csv(results / "census/members.tsv", sep="\t")
    assert len(members) == n and set(members["structure"]) <= {0, *census["structure"]}
    assert census["particles"].sum() == (members["structure"] > 0).sum() > 0
    for number in census["structure"]:
        assert (results / f"census/structures/structure_{number:03d}.star").is_file()
    # references: training = the class averages the workflow's model stored (band limit:
    # shell 10 of the 40³ box); a structure is compared with the trained classes only
    made = json.loads((results / "census/census.json").read_text())
    averages = made["class_average_references"]
    assert set(averages["band_limits"]) == {"3hhb", "prx", "3gl1"}
    assert set(averages["band_limits"].values()) == {10}
    assert set(census["nearest_reference"].dropna()) <= {"3hhb", "prx", "3gl1"}
    for figure in ("cluster_sizes.png", "embedding.png", "averages.png", "census/census.png",
                   "census/similarity.png"):
        assert (results / figure).stat().st_size > 5000
    assert (subdivided / "results/logs/subdivide/features/shard-00001.log").exists()


def test_subdivision_is_complete_and_reproducible(subdivided, tmp_path):
    result = snakemake(subdivided, "subdivide", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    (tmp_path / "config.yaml").write_text(TINY_SUBDIVIDE)
    snakemake(tmp_path, "subdivide", "--until", "extract")
    second = {k: v for k, v in digests(tmp_path / "results/subdivide").items()
              if not k.startswith("logs")}
    first = digests(subdivided / "results/subdivide")
    assert {"tomograms/simulated01.mrc", "picks/simulated02.star",
            "particles/simulated01.h5"} <= set(second)
    assert {k: first[k] for k in second} == second  # same config and seed, same bytes
