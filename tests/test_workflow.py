"""The Snakemake workflow end to end on a tiny config: outputs, report, kill and resume."""

from __future__ import annotations

import hashlib
import json
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
  shard_size: 12
figures:
  structures: [prx]
classification:
  methods: [inception3d, dsrf3d-bin2, rif-svm]
  epochs: 1
  batch_size: 6
  precision: float32
  models:
    dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}
leave_one_out:
  enabled: true
  noise_level: 0.5
  classes: [prx]
  models: [dsrf3d-bin2]
  features: [logits, rif]
  k: 3
  classes3d: 2
  iterations: 1
  embedding_points: 12
  # one novel cluster per fold keeps the run short; several are tested in test_discovery.py
  novelty_top: 1
"""
TAGS = ("snr0.5_tilt60", "snr0.05_tilt60")
# Timings make metrics and model files differ from run to run; everything else is compared
# byte for byte.
TIMED = ("logs", "benchmarks", "classification", "table1", "leave_one_out/snr0.5_tilt60/models")


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
                "train/snr0.5_tilt60/dsrf3d-bin2.log"):
        assert (results / "logs" / log).exists()
    table = pd.read_csv(results / "table1.tsv", sep="\t")
    assert len(table) == 2 * 3
    assert set(table["method"]) == {"inception3d", "dsrf3d-bin2", "rif-svm"}
    assert table["accuracy"].between(0, 1).all()
    paper = table.set_index(["level", "method"])["paper_accuracy"]
    assert paper[(0.5, "rif-svm")] == pytest.approx(0.929)  # the paper's value beside ours
    html = (results / "table1.html").read_text()
    assert "Inception3D" in html and "(0.975)" in html and "dsrf3d-bin2" in html
    variant = load_model(results / "classification/snr0.5_tilt60/dsrf3d-bin2/model.pt")
    assert variant["method"] == "dsrf3d-bin2" and variant["architecture"] == "dsrf3d"
    assert variant["settings"]["input_binning"] == 2
    assert (results / "classification/snr0.05_tilt60/rif-svm/confusion.png").exists()


def test_leave_one_out_outputs(finished_run):
    results = finished_run / "results/leave_one_out/snr0.5_tilt60"
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    assert list(summary.columns[:14]) == ["class", "fold", "features", "model", "cluster_size",
                                          "fraction_in_cluster", "fraction_in_class",
                                          "resolution_nm", "success", "resolution_0143_nm",
                                          "reference_nm", "success_strict", "average", "truth"]
    assert list(summary["features"]) == ["dsrf3d-bin2", "rif"]
    assert set(summary["class"]) == {"prx"} and set(summary["fold"]) == {1}
    assert summary["fraction_in_cluster"].between(0, 1).all()
    assert (summary["resolution_nm"] > 0).all() and (summary["reference_nm"] > 0).all()
    assert (summary["resolution_0143_nm"] > 0).all()
    assert "novel_success_strict" in summary.columns
    folds = pd.read_csv(results / "folds.tsv", sep="\t")
    assert list(folds.columns) == ["class", "fold", "mass_kda"] and list(folds["class"]) == ["prx"]
    model = load_model(results / "models/dsrf3d-bin2/fold_1.pt")
    assert "prx" not in model["class_names"] and len(model["class_names"]) == 3
    assert model["settings"]["exclude_classes"] == ["prx"]
    for row in summary.itertuples():
        assert Path(finished_run / row.average).exists()
    assert list((results / "references/prx").glob("n*/reference.json"))
    successes = pd.read_csv(results / "successes.tsv", sep="\t")
    assert list(successes["classes"]) == [1, 1]
    assert {"successes", "successes_paper", "successes_strict", "successes_without_oracle",
            "successes_without_oracle_strict"} <= set(successes.columns)
    assert (successes["successes"] == successes["successes_paper"]).all()  # criterion: paper
    for figure in ("fig4_recovered.png", "figS1_cluster_sizes.png", "fig2_embedding.png"):
        assert (results / "figures" / figure).stat().st_size > 5000
    assert "Table S2" in (results / "table_s2.html").read_text()


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
    # resumed: the datasets it was killed in, and one training and evaluation on them (the
    # other methods and the leave-one-out stage are not what this test is about)
    metrics = "classification/snr0.5_tilt60/dsrf3d-bin2/metrics.json"
    snakemake(workdir, *[f"results/datasets/{tag}.h5" for tag in TAGS], f"results/{metrics}")
    reference = {k: v for k, v in digests(finished_run / "results").items()
                 if not k.startswith(TIMED)}
    resumed = {k: v for k, v in digests(workdir / "results").items()
               if not k.startswith(TIMED)}
    assert {f"datasets/{tag}.h5" for tag in TAGS} <= set(resumed)
    assert {k: reference[k] for k in resumed} == resumed
    first = json.loads((finished_run / "results" / metrics).read_text())
    second = json.loads((workdir / "results" / metrics).read_text())
    assert first["accuracy"] == second["accuracy"]
    assert first["confusion_matrix"] == second["confusion_matrix"]


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The job counts of a dry run's table (``rule count`` lines)."""
    jobs = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if (len(fields) == 2 and fields[1].isdigit() and fields[0].isidentifier()
                and fields[0] != "total"):
            jobs[fields[0]] = int(fields[1])
    return jobs


def test_a_new_method_or_other_threads_retrain_nothing_else(finished_run, tmp_path):
    assert planned_jobs(snakemake(finished_run, "-n", "--quiet", "rules")) == {}  # complete
    config = finished_run / "config.yaml"
    original = config.read_text()
    try:
        config.write_text(original.replace(
            "methods: [inception3d, dsrf3d-bin2, rif-svm]",
            "methods: [inception3d, dsrf3d-bin2, rif-svm, resnet3d]\n  threads: 1\n"
            "  device: cpu"))
        planned = planned_jobs(snakemake(finished_run, "-n"))
    finally:
        config.write_text(original)
    # only the new method trains and is evaluated (once per dataset); Table 1 is redrawn
    assert planned == {"train": 2, "evaluate": 2, "table1": 1, "all": 1}


REALISTIC = """
seed: 3
structures: [3hhb, {source: 1bxn, name: prx}]
simulation:
  noise_model: dose
  dose_e_per_a2: [60]
  tilt_max_deg: [60]
  per_class: 6
  shard_size: 9
  ctf: {defocus_range_um: [3, 6], b_factor_a2: 200}
  crowding: {max_neighbours: 2}
  ice: {thickness_nm: 150, solvent_contrast: 0.64}
  polarity: white
classification:
  methods: [dsrf3d-bin2, rif-svm]
  epochs: 1
  batch_size: 6
  precision: float32
  models:
    dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}
"""


def test_the_realistic_mode_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(REALISTIC)
    snakemake(tmp_path)
    results = tmp_path / "results"
    with h5py.File(results / "datasets/dose60_tilt60.h5") as h5:
        assert h5.attrs["noise_model"] == "dose" and h5.attrs["polarity"] == "white"
        measured = h5.attrs["measured_snr_per_class"]
        assert measured[1] > measured[0] > 0  # 480 kDa above 60 kDa at the same dose
        assert "neighbour_labels" in h5["truth"]
    summary = (results / "datasets/dose60_tilt60.txt").read_text()
    assert "measured SNR" in summary
    table = pd.read_csv(results / "table1.tsv", sep="\t")
    assert set(table["method"]) == {"dsrf3d-bin2", "rif-svm"}
    assert table["measured_snr"].notna().all() and table["paper_accuracy"].isna().all()
    html = (results / "table1.html").read_text()
    assert "dose 60 e/Å²" in html and "detector-noise model" in html
    assert (results / "figures/snr_tilt_grid_3hhb.png").stat().st_size > 5000


FOLDS = """
structures: [3hhb, 1bxn, 3gl1, 1qvr, 1s3x, 1u6g]
simulation:
  snr: [0.5]
  tilt_max_deg: [60]
  per_class: 6
  shard_size: 9
classification:
  methods: [dsrf3d-bin2, inception3d-bin2]
  models:
    dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}
    inception3d-bin2: {architecture: inception3d, input_binning: 2}
leave_one_out:
  enabled: true
  noise_level: 0.5
  folds: 4
  features: [cnn, hidden, rif]
  models: [dsrf3d-bin2, inception3d-bin2]
"""


def planned_models(result: subprocess.CompletedProcess) -> set[str]:
    """The DSRF3D fold networks a dry run plans (their output paths)."""
    return {line.split()[-1] for line in result.stdout.splitlines()
            if "output:" in line and "/models/dsrf3d-bin2/fold_" in line}


def test_folds_plan_k_trainings_per_cnn_method(tmp_path):
    (tmp_path / "config.yaml").write_text(FOLDS)
    dry_run = snakemake(tmp_path, "-n", "loo_summary")
    planned = planned_jobs(dry_run)
    # 4 folds x 2 methods, whatever the 6 classes' masses turn out to be; one feature file per
    # (method, layer) of fold 1 before the checkpoint tells the other classes' folds
    assert planned["loo_train"] == 8 and planned["loo_folds"] == 1
    assert planned["loo_recover"] == 6 * 5  # 6 classes x (2 methods x 2 layers + rif)
    # the experiment's folder is named by its dataset (snr0.5_tilt60): one at another grid
    # point in the same results/ never overwrites this one's models
    assert planned_models(dry_run) == {
        f"results/leave_one_out/snr0.5_tilt60/models/dsrf3d-bin2/fold_{f}.pt" for f in range(1, 5)}
    paper = tmp_path / "config.yaml"
    paper.write_text(FOLDS.replace("folds: 4", "folds: null"))
    assert planned_jobs(snakemake(tmp_path, "-n", "loo_summary"))["loo_train"] == 12
    paper.write_text(FOLDS.replace("folds: 4", "folds: 7"))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert [line for line in (result.stdout + result.stderr).splitlines()
            if "leave_one_out folds 7 is more than the 6 left-out classes" in line
            and "config.yaml" in line]


def test_bad_structure_stops_with_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("structures: [missing/file.pdb]\n")
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "missing/file.pdb: file not found" in line]
    assert lines
