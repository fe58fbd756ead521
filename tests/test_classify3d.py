"""Reference-free classification and averaging, and the align / average / fsc verbs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from tomosift.cli import main
from tomosift.density import DensitySettings, make_density
from tomosift.discovery.align import align
from tomosift.discovery.average import average
from tomosift.discovery.classify3d import ClassifySettings, classify, write_classification
from tomosift.discovery.fsc import compute_fsc
from tomosift.discovery.rotations import relion_matrix, rotation_angle_deg, transform_volume
from tomosift.discovery.wedge import apply_mask, wedge_mask
from tomosift.io import read_mrc, write_mrc

VOXEL_NM = 0.92


@pytest.fixture(scope="module")
def maps(structure_path):
    """40³ maps of two asymmetric complexes (1u6g, 4v1w)."""
    return {name: make_density(structure_path(name), DensitySettings())[0]
            for name in ("1u6g", "4v1w")}


def _particles(volume, n, snr, seed):
    """n wedge-masked (±60°) noisy copies in random poses: (volumes, rotations, shifts)."""
    rng = np.random.default_rng(seed)
    mask = wedge_mask(volume.shape[0])
    out, rotations, shifts = [], [], []
    for _ in range(n):
        rotation = Rotation.random(random_state=rng).as_matrix()
        shift = rng.uniform(-3, 3, 3)
        particle = transform_volume(volume, rotation, shift)
        particle = particle + rng.normal(0, np.sqrt(particle.var() / snr), particle.shape)
        out.append(apply_mask(particle, mask))
        rotations.append(rotation)
        shifts.append(shift)
    return np.stack(out).astype(np.float32), np.stack(rotations), np.stack(shifts)


def _resolution_on_truth(truth, volume):
    found = align(truth, volume, None, None)
    return compute_fsc(truth, transform_volume(volume, found.rotation, found.shift_voxels),
                       VOXEL_NM).resolution_05_nm


def test_reference_free_average_matches_the_known_pose_average(maps):
    truth = maps["1u6g"]
    volumes, rotations, shifts = _particles(truth, 60, 0.1, seed=0)
    # the pose that brings each particle back onto the truth: R^T, -R^T t
    known, _ = average(volumes, np.transpose(rotations, (0, 2, 1)),
                       -np.einsum("nji,nj->ni", rotations, shifts))
    one = compute_fsc(truth, volumes[0], VOXEL_NM).resolution_05_nm
    with_poses = compute_fsc(truth, known, VOXEL_NM).resolution_05_nm
    assert with_poses < one - 3.0
    result = classify(volumes, ClassifySettings(classes=1, iterations=4, workers=2), progress=False)
    without_poses = _resolution_on_truth(truth, result.averages[0])
    assert without_poses <= with_poses + 2.0
    # the alignment limit widens as the half-sets agree (mean scores are not comparable
    # across limits)
    assert result.history[-1].limit_shell > result.history[0].limit_shell


def test_two_structures_are_separated_without_references(maps, tmp_path):
    first, *_ = _particles(maps["1u6g"], 16, 0.5, seed=1)
    second, *_ = _particles(maps["4v1w"], 16, 0.5, seed=2)
    result = classify(np.concatenate([first, second]), ClassifySettings(classes=2, iterations=3),
                      progress=False)
    truth = np.repeat([0, 1], 16)
    agree = max(np.mean(result.classes == truth), np.mean(result.classes != truth))
    assert agree >= 0.9
    ids = [f"p{i}.mrc" for i in range(32)]
    written = write_classification(tmp_path, result, ids, VOXEL_NM)
    average_map, voxel = read_mrc(written["class_1"])
    assert average_map.shape == (40, 40, 40) and voxel == pytest.approx(VOXEL_NM)
    star = starfile.read(written["star"], always_dict=True)
    particles, optics = star["particles"], star["optics"]
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(9.2)
    assert set(particles["rlnClassNumber"]) == {1, 2} and len(particles) == 32
    # the STAR angles are the reference -> particle rotation: A maps the average onto member 0
    angles = particles.iloc[0][["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    assert rotation_angle_deg(relion_matrix(*angles), result.rotations[0].T) < 1e-3
    scores = pd.read_csv(tmp_path / "iterations/scores.tsv", sep="\t")
    assert list(scores["iteration"]) == [1, 2, 3]


def test_cli_align_average_and_fsc_on_mrc_files(maps, tmp_path, capsys):
    truth = maps["1u6g"]
    volumes, rotations, _ = _particles(truth, 12, 1.0, seed=3)
    paths = []
    for i, volume in enumerate(volumes):
        write_mrc(tmp_path / f"sub_{i}.mrc", volume, VOXEL_NM)
        paths.append(str(tmp_path / f"sub_{i}.mrc"))
    write_mrc(tmp_path / "truth.mrc", truth, VOXEL_NM)
    assert main(["align", str(tmp_path / "truth.mrc"), paths[0], "--reference-tilt-max-deg",
                 "90", "--out", str(tmp_path / "aligned.mrc"), "--star",
                 str(tmp_path / "pose.star")]) == 0
    line = capsys.readouterr().out
    assert line.startswith("rot ") and "constrained correlation" in line
    pose = starfile.read(tmp_path / "pose.star", always_dict=True)["particles"].iloc[0]
    found = relion_matrix(pose["rlnAngleRot"], pose["rlnAngleTilt"], pose["rlnAnglePsi"])
    assert rotation_angle_deg(found, rotations[0]) < 10  # A = the particle's true rotation
    assert main(["average", "--data", *paths, "--classes", "1", "--iterations", "2",
                 "--out-dir", str(tmp_path / "avg")]) == 0
    assert "12 subtomograms in 1 classes" in capsys.readouterr().out
    assert main(["fsc", str(tmp_path / "truth.mrc"), str(tmp_path / "avg/class_1.mrc"),
                 "--align", "--out", str(tmp_path / "fsc.tsv")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FSC 0.5: ") and "mask: soft-sphere" in first
    assert float(first.split()[2]) < 6.0  # 12 members at SNR 1 resolve better than 6 nm
    assert (tmp_path / "fsc.png").stat().st_size > 5000
    write_mrc(tmp_path / "small.mrc", truth[:32, :32, :32], VOXEL_NM)
    assert main(["fsc", str(tmp_path / "truth.mrc"), str(tmp_path / "small.mrc")]) == 2
    assert "differs from" in capsys.readouterr().err
