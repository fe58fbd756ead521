"""Scores, structural features and test accuracy of a trained classifier.

The linear (pre-softmax) outputs of a CNN are the structural features of the discovery stage
(paper Eq. 3): :func:`predict` with ``layer="logits"``; ``layer="hidden"`` gives the last
hidden layer and ``layer="embedding"`` the unit-length output of the embedding head (models
trained with ``embedding_dim``). For the RIF-SVM the scores are its decision values.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from tomosift.classify.devices import (
    as_input,
    choose_device,
    limited_threads,
    prepare_model,
    use_bfloat16,
)
from tomosift.classify.inputs import SplitData, binned_box, read_split, read_volumes
from tomosift.classify.modelfile import load_model
from tomosift.classify.models import build_model
from tomosift.datasets import open_dataset
from tomosift.errors import TomosiftError
from tomosift.progress import progress_bar


def restore_cnn(model_file: dict, device: torch.device | None = None) -> torch.nn.Module:
    """The network of a loaded CNN model file, in evaluation mode."""
    settings = model_file["settings"]
    box = binned_box(model_file["box_voxels"], settings.get("input_binning", 1))
    model = build_model(model_file["architecture"], len(model_file["class_names"]), box,
                        settings.get("dropout"), model_embedding_dim(model_file))
    model.load_state_dict(model_file["state_dict"])
    return prepare_model(model, device or torch.device("cpu")).eval()


def model_embedding_dim(model_file: dict) -> int | None:
    """The embedding head's dimension of a loaded CNN model file (None: no head)."""
    return model_file.get("embedding_dim", model_file["settings"].get("embedding_dim"))


def cnn_scores(model: torch.nn.Module, volumes: np.ndarray, device: torch.device,
               layer: str = "logits", bfloat16: bool = False) -> np.ndarray:
    """Linear scores (B, L), last hidden features (B, H) or unit-length embeddings (B, D) of
    a batch of (B, n, n, n) normalised volumes."""
    if layer not in ("logits", "hidden", "embedding"):
        raise TomosiftError(f"layer must be 'logits', 'hidden' or 'embedding', not '{layer}'")
    inputs = as_input(np.ascontiguousarray(volumes), device)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
        if layer == "hidden":
            outputs = model.hidden_features(inputs)
        elif layer == "embedding":
            outputs = model.embedding(inputs)
        else:
            outputs = model(inputs)
    return outputs.float().cpu().numpy()


def predict(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    split: str = "test",
    layer: str = "logits",
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    precision: str = "float32",
    threads: int | None = None,
) -> tuple[SplitData, np.ndarray, float]:
    """Scores of every subtomogram of a split, streamed in batches, on at most ``threads``
    CPU threads.

    Returns:
        (the split, scores (N, L) — the linear pre-softmax outputs for CNNs (the structural
        features of the paper's Eq. 3), or SVM decision values for the RIF-SVM — and the
        seconds per subtomogram spent, reading included).
    """
    model_file = load_model(model_path)
    data = read_split(data_path, split)
    if data.box_voxels != model_file["box_voxels"]:
        raise TomosiftError(f"{data_path}: box {data.box_voxels}, the model was trained on "
                            f"{model_file['box_voxels']}")
    with limited_threads(threads):
        started = time.perf_counter()
        outputs = _scores(model_file, data, layer, batch_size, device, progress, precision)
        seconds = (time.perf_counter() - started) / len(data.indices)
    return data, outputs, seconds


def _scores(model_file: dict, data: SplitData, layer: str, batch_size: int, device: str,
            progress: bool, precision: str) -> np.ndarray:
    with open_dataset(data.path) as h5:
        if model_file["method"] == "rif-svm":
            from tomosift.classify.rif import features_from_dataset

            features = features_from_dataset(h5, data.indices, model_file["rif_settings"],
                                             progress=progress)
            decision = model_file["classifier"].decision_function(features)
            return np.stack([-decision, decision], 1) if decision.ndim == 1 else decision
        torch_device = choose_device(device)
        model = restore_cnn(model_file, torch_device)
        normalise = model_file["settings"]["normalise"]
        binning = model_file["settings"].get("input_binning", 1)
        bfloat16 = use_bfloat16(torch_device, precision)
        outputs = []
        for start in progress_bar(range(0, len(data.indices), batch_size), desc="inference",
                                  unit="batch", enabled=progress):
            volumes = read_volumes(h5, data.indices[start : start + batch_size], normalise,
                                   binning)
            outputs.append(cnn_scores(model, volumes, torch_device, layer, bfloat16))
        return np.concatenate(outputs)


def evaluate(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    split: str = "test",
    device: str = "auto",
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Accuracy, per-class accuracy, confusion matrix and timings of a model on a split."""
    model_file = load_model(model_path)
    data, scores, seconds = predict(model_path, data_path, split, device=device,
                                    progress=progress, threads=threads)
    if data.class_names != model_file["class_names"]:
        raise TomosiftError(f"{data_path}: classes differ from those the model was trained on")
    predicted = scores.argmax(axis=1)
    n_classes = len(data.class_names)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    per_class = {name: float(confusion[i, i] / max(confusion[i].sum(), 1))
                 for i, name in enumerate(data.class_names)}
    history = model_file.get("history", [])
    train_seconds = (float(np.mean([r["seconds_per_subtomogram"] for r in history]))
                     if history else model_file.get("train_seconds_per_subtomogram"))
    measured = data.attrs.get("measured_snr_mean")
    return {
        "method": model_file["method"],
        "dataset": str(data_path),
        "split": split,
        "noise_model": data.attrs.get("noise_model", "snr"),
        "snr": data.attrs.get("snr"),
        "dose_e_per_a2": data.attrs.get("dose_e_per_a2"),
        "measured_snr": measured,
        "measured_snr_per_class": {
            name: None if value != value else value  # NaN (the empty class) as null
            for name, value in zip(data.class_names, data.attrs.get("measured_snr_per_class", []),
                                   strict=False)},
        "tilt_max_deg": data.attrs.get("tilt_max_deg"),
        "n_subtomograms": len(data.labels),
        "accuracy": float((predicted == data.labels).mean()),
        "per_class_accuracy": per_class,
        "class_names": data.class_names,
        "confusion_matrix": confusion.tolist(),
        "train_seconds_per_subtomogram_per_epoch": train_seconds,
        "inference_seconds_per_subtomogram": seconds,
        "trained_on_device": model_file.get("device", "cpu"),
        "evaluated_on_device": "cpu" if model_file["method"] == "rif-svm"
        else str(choose_device(device)),
        "threads": threads,
        "epochs": len(history) or None,
    }
