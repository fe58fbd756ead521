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


# -- defects of issue 10: ground truth, checkpoints, threads, model files, progress ---------


def test_training_and_prediction_never_read_the_ground_truth(easy_dataset, tmp_path):
    import h5py

    stripped = tmp_path / "stripped.h5"
    stripped.write_bytes(easy_dataset.read_bytes())
    with h5py.File(stripped, "a") as h5:
        del h5["truth"]  # if a reader needed anything in truth/, it would fail now
    settings = replace(FAST, epochs=2)
    train_cnn(easy_dataset, settings, tmp_path / "a.pt", progress=False)
    train_cnn(stripped, settings, tmp_path / "b.pt", progress=False)
    _, scores_a, _ = predict(tmp_path / "a.pt", easy_dataset, "all", device="cpu",
                             progress=False)
    _, scores_b, _ = predict(tmp_path / "b.pt", stripped, "all", device="cpu", progress=False)
    np.testing.assert_array_equal(scores_a, scores_b)


def _resimulate(path, seed):
    from tomosift.simulate.tomography import SimulationSettings

    grid = DensitySettings(box_voxels=BOX)
    maps = [make_density(p, grid)[0] for p in _EASY_SOURCES]
    plan = DatasetPlan(("3hhb", "1bxn"), per_class=16, snr=1000.0, empty_class=False,
                       max_shift_voxels=1.0, seed=seed)
    simulate_shard(maps, plan, SimulationSettings(box_voxels=BOX), 0, plan.n_particles, path,
                   progress=False)


_EASY_SOURCES: list = []


def test_a_checkpoint_resumes_only_on_the_same_data(easy_dataset, tmp_path, structure_path):
    _EASY_SOURCES[:] = [structure_path("3hhb"), structure_path("1bxn")]
    data = tmp_path / "data.h5"
    data.write_bytes(easy_dataset.read_bytes())
    settings = replace(FAST, epochs=2)
    train_cnn(data, settings, tmp_path / "m.pt", progress=False, stop_after_epochs=1)
    # other threads (and device) are not other training: it resumes after epoch 1 (unless
    # the training is deterministic, whose weights depend on the thread count)
    train_cnn(data, replace(settings, deterministic=False), tmp_path / "m.pt", progress=False,
              stop_after_epochs=1)
    resumed = train_cnn(data, replace(settings, threads=1, deterministic=False),
                        tmp_path / "m.pt", progress=False, stop_after_epochs=1)
    assert [r.epoch for r in resumed] == [1, 2]
    restarted = train_cnn(data, replace(settings, threads=1), tmp_path / "m.pt",
                          progress=False, stop_after_epochs=1)
    assert [r.epoch for r in restarted] == [1]  # deterministic: a 2-thread checkpoint is stale
    train_cnn(data, settings, tmp_path / "n.pt", progress=False, stop_after_epochs=1)
    _resimulate(data, seed=8)  # same path, same size, other particles
    history = train_cnn(data, settings, tmp_path / "n.pt", progress=False)
    train_cnn(data, settings, tmp_path / "fresh.pt", progress=False)
    fresh = load_model(tmp_path / "fresh.pt")["state_dict"]
    trained = load_model(tmp_path / "n.pt")["state_dict"]
    assert [r.epoch for r in history] == [1, 2]
    for name, tensor in fresh.items():  # trained from scratch on the new data
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=0)


def test_evaluation_and_prediction_keep_to_their_threads(easy_dataset, tmp_path, monkeypatch):
    from threadpoolctl import threadpool_info

    from tomosift.classify import predict as predict_module
    from tomosift.classify import rif

    train_cnn(easy_dataset, replace(FAST, epochs=1), tmp_path / "m.pt", progress=False)
    train_rif_svm(easy_dataset, tmp_path / "rif.pt", cv_folds=2, progress=False, threads=1)
    seen = {}
    cnn_scores, rif_features = predict_module.cnn_scores, rif.features_from_dataset

    def counting_scores(*args, **kwargs):
        seen["cnn"] = torch.get_num_threads()
        return cnn_scores(*args, **kwargs)

    def counting_features(*args, **kwargs):
        seen["rif"] = max(pool["num_threads"] for pool in threadpool_info())
        return rif_features(*args, **kwargs)

    monkeypatch.setattr(predict_module, "cnn_scores", counting_scores)
    monkeypatch.setattr(rif, "features_from_dataset", counting_features)
    torch.set_num_threads(2)
    evaluate(tmp_path / "m.pt", easy_dataset, device="cpu", progress=False, threads=1)
    evaluate(tmp_path / "rif.pt", easy_dataset, progress=False, threads=1)
    assert seen == {"cnn": 1, "rif": 1}
    assert torch.get_num_threads() == 2  # restored afterwards


def test_a_model_file_cannot_run_code(tmp_path):
    from tomosift.classify.modelfile import MODEL_FORMAT

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "header": "{}", "tensors": {}, "x": Payload()}, evil)
    with pytest.raises(TomosiftError, match="not loaded"):
        load_model(evil)
    assert not marker.exists()


def test_model_files_are_tensors_and_json(easy_dataset, tmp_path):
    train_rif_svm(easy_dataset, tmp_path / "rif.pt", cv_folds=2, progress=False)
    train_cnn(easy_dataset, replace(FAST, epochs=1), tmp_path / "m.pt", progress=False)
    for name in ("rif.pt", "m.pt"):
        payload = torch.load(tmp_path / name, weights_only=True)
        assert set(payload) == {"format", "header", "tensors"}
        header = json.loads(payload["header"])
        assert header["class_names"] == ["3hhb", "1bxn"] and header["box_voxels"] == BOX
        assert all(isinstance(t, torch.Tensor) for t in payload["tensors"].values())


def test_training_writes_a_progress_line_per_epoch(easy_dataset, tmp_path, capsys):
    train_cnn(easy_dataset, replace(FAST, epochs=2), tmp_path / "m.pt")
    lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: lines
    epochs = [line for line in lines if line.startswith("dsrf3d epoch ") and "loss" in line]
    assert len(epochs) == 2
    assert "subtomo/s" in epochs[0] and "left" in epochs[0] and "2/2" in epochs[1]


# -- issue 19: determinism, the volume cache, the embedding head, excluded classes ----------


def _same_weights(a, b) -> bool:
    a, b = load_model(a)["state_dict"], load_model(b)["state_dict"]
    return set(a) == set(b) and all(torch.equal(a[name], b[name]) for name in a)


def test_deterministic_training_gives_identical_weights(easy_dataset, tmp_path):
    # bfloat16 autocast on a CPU that has it (else float32), channels-last, dropout, augment
    settings = replace(FAST, epochs=2, precision="auto", dropout=0.3, augment=True,
                       input_binning=2)
    torch.manual_seed(123)  # the caller's global generator neither matters nor changes
    before = torch.get_rng_state()
    train_cnn(easy_dataset, settings, tmp_path / "a.pt", progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # another global state
    train_cnn(easy_dataset, settings, tmp_path / "b.pt", progress=False)
    assert _same_weights(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards


def test_the_model_header_records_determinism(easy_dataset, tmp_path):
    train_cnn(easy_dataset, replace(FAST, epochs=1), tmp_path / "m.pt", progress=False)
    header = load_model(tmp_path / "m.pt")
    assert header["settings"]["deterministic"] is True
    assert header["reproducibility"]["deterministic"] is True
    assert header["reproducibility"]["threads"] == 2
    assert header["reproducibility"]["device"] == "cpu"
    assert header["embedding_dim"] is None
    assert main(["train", "--data", str(easy_dataset), "--model", "dsrf3d", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "n.pt"), "--device", "cpu",
                 "--threads", "1", "--no-deterministic", "--no-cache-volumes"]) == 0
    settings = load_model(tmp_path / "n.pt")["settings"]
    assert settings["deterministic"] is False and settings["cache_volumes"] is False


def test_the_volume_cache_gives_the_same_training(easy_dataset, tmp_path):
    from tomosift.classify.inputs import cache_dtype, cache_volumes, read_volumes
    from tomosift.datasets import open_dataset

    settings = replace(FAST, epochs=2, input_binning=2)
    train_cnn(easy_dataset, settings, tmp_path / "cached.pt", progress=False)
    train_cnn(easy_dataset, replace(settings, cache_volumes=False), tmp_path / "streamed.pt",
              progress=False)
    assert _same_weights(tmp_path / "cached.pt", tmp_path / "streamed.pt")
    indices = read_split(easy_dataset, "train").indices[::-1]
    with open_dataset(easy_dataset) as h5:
        cache = cache_volumes(h5, indices, "per_subtomogram", 2, chunk=5)
        np.testing.assert_array_equal(cache[3:9], read_volumes(h5, indices[3:9],
                                                               "per_subtomogram", 2))
    assert cache.dtype == np.float32
    assert cache_dtype(8388, 40, "per_subtomogram") == np.float32  # 2 GiB
    assert cache_dtype(8389, 40, "per_subtomogram") == np.float16
    assert cache_dtype(8389, 40, "none") is None


def test_an_embedding_head_trains_and_gives_unit_features(easy_dataset, tmp_path, capsys):
    from tomosift.classify.predict import restore_cnn
    from tomosift.discovery.features import read_features

    model = tmp_path / "e.pt"
    assert main(["train", "--data", str(easy_dataset), "--model", "dsrf3d", "--epochs", "2",
                 "--batch-size", "8", "--out", str(model), "--device", "cpu", "--threads", "2",
                 "--embedding-dim", "8", "--precision", "float32"]) == 0
    header = load_model(model)
    assert header["embedding_dim"] == 8 and header["settings"]["embedding_dim"] == 8
    assert all(r["embedding_loss"] > 0 for r in header["history"])
    assert restore_cnn(header).embedding_head.out_features == 8
    features = tmp_path / "f.h5"
    assert main(["features", "--data", str(easy_dataset), "--model", str(model), "--out",
                 str(features), "--layer", "embedding", "--device", "cpu"]) == 0
    values = read_features(features).features
    assert values.shape == (32, 8)
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-5)


def test_embedding_features_of_a_model_without_the_head_fail_in_one_line(easy_dataset,
                                                                        tmp_path, capsys):
    train_cnn(easy_dataset, replace(FAST, epochs=1), tmp_path / "plain.pt", progress=False)
    capsys.readouterr()
    assert main(["features", "--data", str(easy_dataset), "--model", str(tmp_path / "plain.pt"),
                 "--out", str(tmp_path / "f.h5"), "--layer", "embedding"]) != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(tmp_path / "plain.pt") in error
    assert "no embedding head (train it with --embedding-dim)" in error
    assert not (tmp_path / "f.h5").exists()


def test_method_settings_pass_the_new_keys_through():
    from tomosift.recipe import method_settings

    classification = {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "lr_decay": 1e-6,
                      "momentum": 0.9, "normalise": "per_subtomogram", "deterministic": False,
                      "models": {"dsrf3d-e": {"architecture": "dsrf3d", "embedding_dim": 16,
                                              "embedding_temperature": 0.2}}}
    resolved = method_settings(classification, "dsrf3d-e")
    assert resolved["embedding_dim"] == 16 and resolved["embedding_temperature"] == 0.2
    assert resolved["embedding_weight"] == 1.0 and resolved["deterministic"] is False
    assert resolved["cache_volumes"] is True
    assert method_settings(classification, "dsrf3d")["embedding_dim"] is None


def test_two_excluded_classes_both_vanish(tmp_path, structure_path):
    from tomosift.simulate.tomography import SimulationSettings

    box, names = 24, ("3hhb", "1bxn", "1s3x", "2cg9")
    grid = DensitySettings(box_voxels=box)
    maps = [make_density(structure_path(name), grid)[0] for name in names]
    plan = DatasetPlan(names, per_class=4, snr=1000.0, empty_class=False,
                       max_shift_voxels=1.0)
    data = tmp_path / "four.h5"
    simulate_shard(maps, plan, SimulationSettings(box_voxels=box), 0, plan.n_particles, data,
                   progress=False)
    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(data), "--model", "dsrf3d", "--epochs", "1",
                 "--batch-size", "8", "--out", str(model), "--device", "cpu", "--threads", "2",
                 "--exclude-class", "1bxn", "--exclude-class", "2cg9"]) == 0
    header = load_model(model)
    assert header["class_names"] == ["3hhb", "1s3x"]
    assert header["settings"]["exclude_classes"] == ["1bxn", "2cg9"]
    kept = read_split(data, "train", ("1bxn", "2cg9"))
    assert header["trained_on"]["n_train"] == len(kept.indices) < len(read_split(data).indices)
    assert header["state_dict"]["classifier.weight"].shape[0] == 2


def test_one_cycle_schedule_warms_up_then_anneals():
    from tomosift.classify.train import learning_rate_schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    settings = TrainingSettings(architecture="dsrf3d", epochs=4, batch_size=10,
                                learning_rate=0.02, schedule="one_cycle")
    optimiser = torch.optim.SGD([parameter], lr=settings.learning_rate, momentum=0.9)
    schedule = learning_rate_schedule(optimiser, settings, n_train=95)  # 10 batches an epoch
    rates = []
    for _ in range(40):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    peak = int(np.argmax(rates))
    assert 10 <= peak <= 13 and rates[peak] == pytest.approx(0.02, rel=1e-3)  # 30% of 40
    assert rates[0] == pytest.approx(0.02 / 25, rel=1e-3)  # PyTorch's div_factor
    assert rates[-1] < 0.02 / 1000 and all(np.diff(rates[peak:]) <= 0)
    paper = learning_rate_schedule(optimiser, replace(settings, schedule="paper"), 95)
    assert isinstance(paper, torch.optim.lr_scheduler.LambdaLR)
    with pytest.raises(TomosiftError, match="schedule must be one of"):
        replace(settings, schedule="cosine")
