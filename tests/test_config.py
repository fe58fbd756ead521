"""Config schema: defaults filled in, and one clear line for every wrong key or value."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from tomosift.config import load_config, load_yaml, validate_config
from tomosift.errors import TomosiftError
from tomosift.recipe import method_architecture

REPO = Path(__file__).resolve().parents[1]

SCHEMA = load_yaml(REPO / "workflow/schemas/config.schema.yaml")
CONFIGS = ["config/config.yaml", "config/paper.yaml", "config/benchmark22.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_validate(path):
    config = load_config(REPO / path, REPO / "workflow/schemas/config.schema.yaml")
    assert config["voxel_size_nm"] == pytest.approx(0.92)
    assert config["simulation"]["ctf"]["defocus_um"] == pytest.approx(5.0)


def test_defaults_are_the_papers():
    config = validate_config({"structures": ["1bxn"]}, SCHEMA)
    sim = config["simulation"]
    assert sim["snr"] == [1000, 0.5, 0.1, 0.05, 0.03]
    assert sim["tilt_max_deg"] == [60, 50, 40]
    assert sim["per_class"] == 1000
    assert sim["ctf"] == {"enabled": True, "voltage_kv": 300, "cs_mm": 2.0, "defocus_um": 5.0,
                          "amplitude_contrast": 0.07, "defocus_range_um": None,
                          "b_factor_a2": 0}
    # the paper's simplifications stay the default: SNR-calibrated noise, alone in vacuum
    assert sim["noise_model"] == "snr" and sim["crowding"]["max_neighbours"] == 0
    assert sim["ice"]["thickness_nm"] == 0 and sim["ice"]["solvent_contrast"] == 0
    assert sim["polarity"] == "recorded"
    assert config["box_voxels"] == 40


def _error(config) -> str:
    with pytest.raises(TomosiftError) as info:
        validate_config(copy.deepcopy(config), SCHEMA, source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    return message


def test_misspelt_key_is_named_with_a_suggestion():
    message = _error({"structures": ["1bxn"], "simulation": {"snrs": [0.1]}})
    assert "unknown key 'simulation.snrs'" in message
    assert "did you mean 'snr'" in message


def test_negative_snr_is_named():
    message = _error({"structures": ["1bxn"], "simulation": {"snr": [0.5, -0.1]}})
    assert "simulation.snr[1]" in message and "-0.1" in message and "> 0" in message


def test_box_must_be_an_integer():
    message = _error({"structures": ["1bxn"], "box_voxels": 40.5})
    assert "box_voxels" in message and "integer" in message


def test_tilt_outside_range_and_bad_enum():
    assert "simulation.tilt_max_deg[0]" in _error(
        {"structures": ["1bxn"], "simulation": {"tilt_max_deg": [95]}})
    assert "density.method" in _error({"structures": ["1bxn"], "density": {"method": "magic"}})


def test_structures_required():
    assert "structures" in _error({})


@pytest.mark.parametrize(("text", "key", "says"), [
    ("simulation:\n  snrs: [0.1]\n", "simulation.snrs", "did you mean 'snr'"),
    ("classification:\n  methods: [dsrf3d, vgg3d]\n", "classification.methods",
     "unknown method 'vgg3d'"),
])
def test_snakemake_stops_with_one_line_naming_the_key(tmp_path, text, key, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text("structures: [1bxn]\n" + text)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if key in line]
    assert lines, output
    assert says in lines[0] and str(bad) in lines[0]


def test_named_variants_resolve_to_their_architecture():
    models = {"dsrf3d-bin2": {"architecture": "dsrf3d", "input_binning": 2},
              "inception3d": {"dropout": 0.7}}
    assert method_architecture("dsrf3d-bin2", models) == "dsrf3d"
    assert method_architecture("inception3d", models) == "inception3d"
    assert method_architecture("rif-svm", models) == "rif-svm"
    with pytest.raises(TomosiftError, match="unknown method 'vgg3d'"):
        method_architecture("vgg3d", models)
    with pytest.raises(TomosiftError, match="keeps its architecture"):
        method_architecture("dsrf3d", {"dsrf3d": {"architecture": "resnet3d"}})
    config = validate_config({"structures": ["1bxn"], "classification": {
        "methods": ["dsrf3d-bin2"], "models": models}}, SCHEMA)
    assert config["classification"]["models"]["dsrf3d-bin2"]["input_binning"] == 2
    with pytest.raises(TomosiftError, match="architecture"):
        validate_config({"structures": ["1bxn"], "classification": {
            "models": {"x": {"architecture": "vgg3d"}}}}, SCHEMA)
