"""Training and evaluation: learning at all, resuming, features, metrics, the RIF-SVM."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tomosift.classify.inputs import fourier_bin, read_split
from tomosift.classify.modelfile import load_model
from tomosift.classify.predict import evaluate, predict
from tomosift.classify.train import settings_from_config, train_cnn, train_rif_svm
from tomosift.cli import main
from tomosift.datasets import DatasetPlan, simulate_shard
from tomosift.density import DensitySettings, make_density
from tomosift.errors import TomosiftError
from tomosift.recipe import TrainingSettings

BOX = 24


@pytest.fixture(scope="module")
def easy_dataset(tmp_path_factory, structure_path):
    """Two clearly different complexes at SNR 1000 in a 24³ box, 16 subtomograms each."""
    from tomosift.simulate.tomography import SimulationSettings

    grid = DensitySettings(box_voxels=BOX)
    maps = [make_density(structure_path(name), grid)[0] for name in ("3hhb", "1bxn")]
    plan = DatasetPlan(("3hhb", "1bxn"), per_class=16, snr=1000.0, empty_class=False,
                       max_shift_voxels=1.0)
    path = tmp_path_factory.mktemp("easy") / "easy.h5"
    simulate_shard(maps, plan, SimulationSettings(box_voxels=BOX), 0, plan.n_particles, path,
                   progress=False)
    return path


FAST = TrainingSettings(architecture="dsrf3d", epochs=12, batch_size=8, learning_rate=0.01,
                        precision="float32", threads=2, seed=3)


def test_tiny_overfit_reaches_95_percent(easy_dataset, tmp_path):
    history = train_cnn(easy_dataset, FAST, tmp_path / "m.pt", progress=False)
    assert history[-1].accuracy >= 0.95
    assert history[-1].loss < history[0].loss
    metrics = evaluate(tmp_path / "m.pt", easy_dataset, "train", device="cpu", progress=False)
    assert metrics["accuracy"] >= 0.95
    assert metrics["epochs"] == 12
    assert metrics["train_seconds_per_subtomogram_per_epoch"] > 0


def test_interrupted_training_resumes_to_the_same_weights(easy_dataset, tmp_path):
    settings = replace(FAST, epochs=3)
    train_cnn(easy_dataset, settings, tmp_path / "straight.pt", progress=False)
    checkpoint = tmp_path / "resumed.pt.ckpt"
    partial = train_cnn(easy_dataset, settings, tmp_path / "resumed.pt", progress=False,
                        stop_after_epochs=1)
    assert len(partial) == 1 and checkpoint.exists() and not (tmp_path / "resumed.pt").exists()
    history = train_cnn(easy_dataset, settings, tmp_path / "resumed.pt", progress=False)
    assert [r.epoch for r in history] == [1, 2, 3]
    assert not checkpoint.exists()
    straight = load_model(tmp_path / "straight.pt")["state_dict"]
    resumed = load_model(tmp_path / "resumed.pt")["state_dict"]
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)


def test_a_stale_checkpoint_of_other_settings_is_not_resumed(easy_dataset, tmp_path):
    train_cnn(easy_dataset, replace(FAST, epochs=2, seed=9), tmp_path / "m.pt",
              progress=False, stop_after_epochs=1)
    history = train_cnn(easy_dataset, replace(FAST, epochs=2), tmp_path / "m.pt",
                        progress=False)
    assert [r.epoch for r in history] == [1, 2]


def test_features_are_the_linear_scores(easy_dataset, tmp_path):
    train_cnn(easy_dataset, replace(FAST, epochs=1), tmp_path / "m.pt", progress=False)
    data, logits, seconds = predict(tmp_path / "m.pt", easy_dataset, "test", device="cpu",
                                    progress=False)
    assert logits.shape == (16, 2) and seconds > 0
    _, hidden, _ = predict(tmp_path / "m.pt", easy_dataset, "all", layer="hidden",
                           device="cpu", progress=False)
    assert hidden.shape == (32, 512)
    assert len(data.labels) == 16


def test_fourier_binning_keeps_the_low_frequencies_exactly():
    n = 40
    z, _, x = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    low = 3 + np.cos(2 * np.pi * 3 * x / n) + np.sin(2 * np.pi * 2 * z / n)
    high = np.cos(2 * np.pi * 15 * x / n)  # above half Nyquist: must vanish, not alias
    binned = fourier_bin(np.stack([low, low + high]).astype(np.float32), 2)
    assert binned.shape == (2, 20, 20, 20) and binned.dtype == np.float32
    z2, _, x2 = np.meshgrid(*[np.arange(20)] * 3, indexing="ij")
    expected = 3 + np.cos(2 * np.pi * 3 * x2 / 20) + np.sin(2 * np.pi * 2 * z2 / 20)
    np.testing.assert_allclose(binned[0], expected, atol=1e-5)
    np.testing.assert_allclose(binned[1], expected, atol=1e-5)
    with pytest.raises(TomosiftError, match="divisible"):
        fourier_bin(np.zeros((1, 30, 30, 30), np.float32), 4)


def test_a_binned_model_learns_and_predicts_on_the_full_box(easy_dataset, tmp_path):
    settings = replace(FAST, input_binning=2)
    history = train_cnn(easy_dataset, settings, tmp_path / "m.pt", progress=False)
    assert history[-1].accuracy >= 0.9
    payload = load_model(tmp_path / "m.pt")
    assert payload["box_voxels"] == BOX and payload["settings"]["input_binning"] == 2
    assert payload["state_dict"]["fully_connected.0.weight"].shape[1] == 64 * 3**3  # 12³ -> 3³
    metrics = evaluate(tmp_path / "m.pt", easy_dataset, "train", device="cpu", progress=False)
    assert metrics["accuracy"] >= 0.9


def test_rif_svm_learns_the_easy_classes(easy_dataset, tmp_path):
    record = train_rif_svm(easy_dataset, tmp_path / "rif.pt", cv_folds=2, progress=False)
    assert record["cv_accuracy"] > 0.8
    metrics = evaluate(tmp_path / "rif.pt", easy_dataset, "test", progress=False)
    assert metrics["method"] == "rif-svm" and metrics["accuracy"] >= 0.9
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == 16
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 16)


def test_cli_train_and_evaluate(easy_dataset, tmp_path, capsys):
    model, metrics = tmp_path / "m.pt", tmp_path / "metrics.json"
    assert main(["train", "--data", str(easy_dataset), "--model", "dsrf3d", "--epochs", "1",
                 "--batch-size", "8", "--out", str(model), "--device", "cpu"]) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(easy_dataset),
                 "--out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert result["n_subtomograms"] == 16 and 0 <= result["accuracy"] <= 1
    assert len(result["per_class_accuracy"]) == 2


def test_bad_model_file_and_bad_settings(tmp_path, easy_dataset):
    fake = tmp_path / "fake.pt"
    fake.write_text("not a model")
    with pytest.raises(TomosiftError, match="not a tomosift model"):
        load_model(fake)
    assert main(["evaluate", "--model", str(fake), "--data", str(easy_dataset),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(TomosiftError, match="unknown model"):
        TrainingSettings(architecture="vgg")
    with pytest.raises(TomosiftError, match="split must be train, test or all"):
        read_split(easy_dataset, "validation")


def test_settings_from_config_with_per_model_overrides():
    classification = {"epochs": 20, "batch_size": 64, "learning_rate": 0.01, "lr_decay": 1e-6,
                      "momentum": 0.9, "normalise": "per_subtomogram", "device": "auto",
                      "threads": 2, "models": {"inception3d": {"dropout": 0.7, "epochs": 3}}}
    settings = settings_from_config(classification, "inception3d", seed=4)
    assert settings.dropout == 0.7 and settings.epochs == 3 and settings.seed == 4
    assert settings_from_config(classification, "dsrf3d", seed=4).epochs == 20
