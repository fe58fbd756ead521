"""The ``tomosift`` command line, end to end, including its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from tomosift.cli import main
from tomosift.io import read_mrc, write_mrc
from tomosift.simulate.poses import pose_rng, random_pose
from tomosift.simulate.tomography import SimulationSettings, TiltSeriesGeometry, padded_spectrum


def test_density_command_resolves_an_id(tmp_path, capsys):
    out = tmp_path / "hb.mrc"
    assert main(["density", "3hhb", "--out", str(out), "--offline"]) == 0
    volume, voxel = read_mrc(out)
    assert volume.shape == (40, 40, 40) and voxel == pytest.approx(0.92)
    assert "kDa" in capsys.readouterr().out


def test_density_command_options(tmp_path, structure_path):
    out = tmp_path / "small.mrc"
    assert main(["density", str(structure_path("3hhb")), "--out", str(out), "--box", "24",
                 "--voxel-size-nm", "1.2", "--method", "electron", "--assembly", "none"]) == 0
    volume, voxel = read_mrc(out)
    assert volume.shape == (24, 24, 24) and voxel == pytest.approx(1.2)


def test_simulate_then_show(tmp_path, structure_path, capsys):
    out = tmp_path / "d.h5"
    code = main(["simulate", "--structures", str(structure_path("3hhb")),
                 str(structure_path("3gl1")), "--snr", "0.1", "--tilt-max-deg", "50",
                 "--per-class", "3", "--seed", "2", "--out", str(out), "--mode", "wbp"])
    assert code == 0
    with h5py.File(out) as h5:
        assert h5["volumes"].shape == (9, 40, 40, 40)
        assert h5.attrs["reconstruction"] == "wbp" and h5.attrs["tilt_max_deg"] == 50
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "3gl1" in shown and "empty" in shown and "tilt_max_deg: 50" in shown


def test_snr_command_on_pairs(tmp_path, small_maps, capsys):
    geometry = TiltSeriesGeometry(SimulationSettings())
    spectrum = padded_spectrum(small_maps["3hhb"])
    rng = np.random.default_rng(8)
    paths = []
    for index in range(20):
        pose = random_pose(pose_rng(1, index), 4.0)
        for copy in "ab":
            path = tmp_path / f"p{index}{copy}.mrc"
            write_mrc(path, geometry.particle(spectrum, *pose, 0.1, rng)[0], 0.92)
            paths.append(str(path))
    assert main(["snr", *paths]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    mean = float(last.split("mean SNR ")[1].split()[0])
    assert mean == pytest.approx(0.1, rel=0.15)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("\n".join(f"{a}\t{b}" for a, b in zip(paths[::2], paths[1::2], strict=True)))
    assert main(["snr", "--pairs", str(pairs)]) == 0


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["density", "missing.pdb", "--out", "x.mrc"], "missing.pdb: file not found"),
        (["density", "9zzz", "--out", "x.mrc", "--offline"], "structure '9zzz' not found"),
        (["simulate", "--structures", "EMPTYDIR", "--snr", "0.1", "--tilt-max-deg", "60",
          "--per-class", "2", "--out", "x.h5"], "holds no PDB/mmCIF/MRC files"),
        (["simulate", "--structures", "HB", "--snr", "0.1", "--tilt-max-deg", "95",
          "--per-class", "2", "--out", "x.h5"], "tilt_max_deg must be in (0, 90]"),
        (["simulate", "--structures", "HB", "--snr", "0", "--tilt-max-deg", "60",
          "--per-class", "2", "--out", "x.h5"], "SNR must be > 0"),
        (["show", "nothing.h5"], "nothing.h5: file not found"),
        (["snr", "a.mrc"], "even number"),
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch, structure_path, arguments,
                                               expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTYDIR").mkdir()
    arguments = [str(structure_path("3hhb")) if a == "HB" else a for a in arguments]
    result = subprocess.run([sys.executable, "-m", "tomosift.cli", *arguments],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tomosift: error: ") and expected in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTYDIR"]
