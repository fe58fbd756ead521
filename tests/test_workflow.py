"""The Snakemake workflow end to end on a tiny config: outputs, report, kill and resume."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest

from tomosift.classify.modelfile import load_model

REPO = Path(__file__).resolve().parents[1]
TINY = """
seed: 5
structures: [3hhb, 3gl1, {source: 1bxn, name: prx}]
simulation:
  snr: [0.5, 0.05]
  tilt_max_deg: [60]
  per_class: 6
  shard_size: 5
figures:
  structures: [prx]
classification:
  methods: [inception3d, dsrf3d, dsrf3d-bin2, rif-svm]
  epochs: 1
  batch_size: 6
  precision: float32
  models:
    dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}
"""
TAGS = ("snr0.5_tilt60", "snr0.05_tilt60")
# Timings make metrics and model files differ from run to run; everything else is compared
# byte for byte.
TIMED = ("logs", "benchmarks", "classification", "table1")


def snakemake(workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
               "--replace-workflow-config", "--cores", "2", "--rerun-incomplete", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "config.yaml").write_text(TINY)
    snakemake(workdir)
    return workdir


def test_outputs_of_a_run(finished_run):
    results = finished_run / "results"
    summary = pd.read_csv(results / "densities/summary.tsv", sep="\t")
    assert list(summary["name"]) == ["3hhb", "3gl1", "prx"]
    assert (summary["mass_kda"] > 30).all() and (summary["max_extent_nm"] > 5).all()
    for tag in TAGS:
        with h5py.File(results / f"datasets/{tag}.h5") as h5:
            assert h5["volumes"].shape == (24, 40, 40, 40)
            assert h5["volumes"].is_virtual
        assert "train" in (results / f"datasets/{tag}.txt").read_text()
    for figure in ("snr_tilt_grid_prx.png", "ctf_power_spectrum.png", "missing_wedge.png"):
        assert (results / "figures" / figure).stat().st_size > 5000
    assert (results / "densities/montage.png").stat().st_size > 5000
    for log in ("density/3hhb.log", "density_summary.log", "join/snr0.5_tilt60.log",
                "train/snr0.5_tilt60/dsrf3d.log"):
        assert (results / "logs" / log).exists()
    table = pd.read_csv(results / "table1.tsv", sep="\t")
    assert len(table) == 2 * 4
    assert set(table["method"]) == {"inception3d", "dsrf3d", "dsrf3d-bin2", "rif-svm"}
    assert table["accuracy"].between(0, 1).all()
    paper = table.set_index(["level", "method"])["paper_accuracy"]
    assert paper[(0.5, "rif-svm")] == pytest.approx(0.929)  # the paper's value beside ours
    html = (results / "table1.html").read_text()
    assert "Inception3D" in html and "(0.975)" in html and "dsrf3d-bin2" in html
    variant = load_model(results / "classification/snr0.5_tilt60/dsrf3d-bin2/model.pt")
    assert variant["method"] == "dsrf3d-bin2" and variant["architecture"] == "dsrf3d"
    assert variant["settings"]["input_binning"] == 2
    assert (results / "classification/snr0.05_tilt60/rif-svm/confusion.png").exists()


def test_report_is_written(finished_run):
    snakemake(finished_run, "--report", str(finished_run / "report.html"))
    html = (finished_run / "report.html").read_text(errors="replace")
    assert "montage.png" in html and "snr_tilt_grid_prx.png" in html
    assert "table1.html" in html and "table1_heatmap.png" in html


def test_killed_run_resumes_to_the_same_bytes(finished_run, tmp_path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(TINY)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
               "--replace-workflow-config", "--cores", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(workdir.glob("results/datasets/*/shards/*.h5")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole job tree, mid-run
    process.wait()
    joined = list(workdir.glob("results/datasets/*.h5"))
    assert len(joined) < len(TAGS), "the run finished before it could be killed"
    snakemake(workdir, "--unlock")  # a SIGKILL leaves Snakemake's lock behind
    snakemake(workdir)
    reference = {k: v for k, v in digests(finished_run / "results").items()
                 if not k.startswith(TIMED)}
    resumed = {k: v for k, v in digests(workdir / "results").items()
               if not k.startswith(TIMED)}
    assert resumed == reference
    first = pd.read_csv(finished_run / "results/table1.tsv", sep="\t")
    second = pd.read_csv(workdir / "results/table1.tsv", sep="\t")
    pd.testing.assert_series_equal(first["accuracy"], second["accuracy"])


def test_bad_structure_stops_with_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("structures: [missing/file.pdb]\n")
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "missing/file.pdb: file not found" in line]
    assert lines
