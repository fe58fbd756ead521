"""Structural feature vectors of subtomograms, from three sources, for clustering.

- ``cnn``: a trained CNN's linear pre-softmax outputs (``layer="logits"``, the paper's Eq. 3),
  its last hidden layer (``layer="hidden"``) or the unit-length output of its embedding head
  (``layer="embedding"``, models trained with ``--embedding-dim``, learnt with the supervised
  contrastive loss, :mod:`tomosift.classify.metric`); the maximum softmax probability of every
  particle is stored beside them (a novelty cue: a structure the network never saw tends to
  get a flat softmax);
- ``rif``: the rotation-invariant spherical-harmonic features of the RIF-SVM baseline (no
  model needed);
- ``posenorm``: pose-normalised voxels (Xu et al. 2015; see :mod:`.posenorm`).

A feature file (HDF5) holds ``features`` (N, F) float32, ``indices`` (N,) the dataset indices,
``labels`` (N,) the true classes (-1 when unknown), ``splits`` (N,) ``train``/``test``,
``max_softmax`` (N,) for CNN features, and attributes naming the source, layer, model and
dataset. Labels are copied for scoring only: no feature is computed from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.progress import progress_bar

SOURCES = ("cnn", "rif", "posenorm")
LAYERS = ("logits", "hidden", "embedding")


@dataclass
class FeatureSet:
    """Feature vectors of the particles of one dataset (see the module docstring)."""

    features: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]
    attrs: dict = field(default_factory=dict)
    max_softmax: np.ndarray | None = None

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of one split (``all`` for every row)."""
        return np.arange(len(self.indices)) if split == "all" else np.flatnonzero(
            self.splits == split)


def _dataset_rows(data_path, split: str):
    from tomosift.classify.inputs import read_split
    from tomosift.datasets import open_dataset

    data = read_split(data_path, split)
    with open_dataset(data_path) as h5:
        splits = h5["split"][()].astype(str)[data.indices]
    return data, splits


def cnn_features(model_path: str | os.PathLike, data_path: str | os.PathLike,
                 split: str = "all", layer: str = "logits", batch_size: int = 64,
                 device: str = "auto", threads: int | None = None,
                 progress: bool = True) -> FeatureSet:
    """A CNN's logits (N, L), hidden layer (N, H) or embedding (N, D, unit length) and its
    maximum softmax (N,) for every particle of a split."""
    return cnn_layer_features(model_path, data_path, [layer], split, batch_size, device,
                              threads, progress)[layer]


def cnn_layer_features(model_path: str | os.PathLike, data_path: str | os.PathLike,
                       layers: Sequence[str], split: str = "all", batch_size: int = 64,
                       device: str = "auto", threads: int | None = None,
                       progress: bool = True) -> dict[str, FeatureSet]:
    """Several layers of a CNN (see :func:`cnn_features`) in one pass over the data:
    {layer: its feature set}; each volume goes through the network once."""
    import torch

    from tomosift.classify.devices import as_input, choose_device, limited_threads
    from tomosift.classify.inputs import read_volumes
    from tomosift.classify.modelfile import load_model
    from tomosift.classify.predict import model_embedding_dim, restore_cnn
    from tomosift.datasets import open_dataset

    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown or not layers:
        raise TomosiftError(f"layer must be one of {', '.join(LAYERS)}, not "
                            f"'{', '.join(unknown)}'")
    model_file = load_model(model_path)
    if model_file["method"] == "rif-svm":
        raise TomosiftError(f"{model_path}: a RIF-SVM has no CNN features; use --source rif")
    if "embedding" in layers and not model_embedding_dim(model_file):
        raise TomosiftError(f"{model_path}: this model has no embedding head (train it with "
                            "--embedding-dim)")
    data, splits = _dataset_rows(data_path, split)
    if data.box_voxels != model_file["box_voxels"]:
        raise TomosiftError(f"{data_path}: box {data.box_voxels}, the model {model_path} was "
                            f"trained on {model_file['box_voxels']}")
    settings = model_file["settings"]
    features: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    softmax = []
    with limited_threads(threads), open_dataset(data_path) as h5:
        torch_device = choose_device(device)
        model = restore_cnn(model_file, torch_device)
        for start in progress_bar(range(0, len(data.indices), batch_size), desc="features",
                                  unit="batch", enabled=progress):
            volumes = read_volumes(h5, data.indices[start : start + batch_size],
                                   settings["normalise"], settings.get("input_binning", 1))
            inputs = as_input(np.ascontiguousarray(volumes), torch_device)
            with torch.inference_mode():
                hidden = model.hidden_features(inputs)
                logits = model.head(hidden).float()
                outputs = {"logits": logits, "hidden": hidden.float()}
                if "embedding" in layers:
                    outputs["embedding"] = model.embed_hidden(hidden)
            for layer in layers:
                features[layer].append(outputs[layer].cpu().numpy())
            softmax.append(torch.softmax(logits, dim=1).amax(dim=1).cpu().numpy())
    max_softmax = np.concatenate(softmax).astype(np.float32)
    attrs = {"source": "cnn", "model": str(model_path), "model_method": model_file["method"],
             "training_classes": list(model_file["class_names"]),
             "excluded_classes": list(settings.get("exclude_classes", [])),
             "data": str(data_path)}
    return {layer: FeatureSet(np.concatenate(features[layer]).astype(np.float32),
                              data.indices, data.labels, splits, data.class_names,
                              {**attrs, "layer": layer}, max_softmax)
            for layer in layers}


def rif_dataset_features(data_path: str | os.PathLike, split: str = "all", settings=None,
                         threads: int | None = None, progress: bool = True) -> FeatureSet:
    """Rotation-invariant features (:mod:`tomosift.classify.rif`) of a split."""
    from tomosift.classify.devices import limited_threads
    from tomosift.classify.rif import RifSettings, features_from_dataset
    from tomosift.datasets import open_dataset

    settings = settings or RifSettings()
    data, splits = _dataset_rows(data_path, split)
    with limited_threads(threads), open_dataset(data_path) as h5:
        features = features_from_dataset(h5, data.indices, settings, progress=progress)
    return FeatureSet(features, data.indices, data.labels, splits, data.class_names,
                      {"source": "rif", "data": str(data_path)})


def posenorm_dataset_features(data_path: str | os.PathLike, split: str = "all", settings=None,
                              batch_size: int = 256, threads: int | None = None,
                              progress: bool = True) -> FeatureSet:
    """Pose-normalised voxel features (:mod:`.posenorm`) of a split."""
    from tomosift.classify.devices import limited_threads
    from tomosift.classify.inputs import read_volumes
    from tomosift.datasets import open_dataset
    from tomosift.discovery.posenorm import PosenormSettings, posenorm_features

    settings = settings or PosenormSettings()
    data, splits = _dataset_rows(data_path, split)
    parts = []
    with limited_threads(threads), open_dataset(data_path) as h5:
        dark = str(h5.attrs.get("polarity", "white")) == "dark"
        bar = progress_bar(total=len(data.indices), desc="pose-normalised features",
                           unit="subtomo", enabled=progress)
        with bar:
            for start in range(0, len(data.indices), batch_size):
                batch = data.indices[start : start + batch_size]
                volumes = read_volumes(h5, batch, normalise="none")
                parts.append(posenorm_features(-volumes if dark else volumes, settings))
                bar.update(len(batch))
    return FeatureSet(np.concatenate(parts), data.indices, data.labels, splits,
                      data.class_names, {"source": "posenorm", "data": str(data_path)})


def compute_features(source: str, data_path: str | os.PathLike,
                     model_path: str | os.PathLike | None = None, split: str = "all",
                     layer: str = "logits", threads: int | None = None, device: str = "auto",
                     progress: bool = True) -> FeatureSet:
    """Features of one source (``cnn`` needs ``model_path``)."""
    if source == "cnn":
        if model_path is None:
            raise TomosiftError("CNN features need a model (--model)")
        return cnn_features(model_path, data_path, split, layer, device=device,
                            threads=threads, progress=progress)
    if source == "rif":
        return rif_dataset_features(data_path, split, threads=threads, progress=progress)
    if source == "posenorm":
        return posenorm_dataset_features(data_path, split, threads=threads, progress=progress)
    raise TomosiftError(f"feature source must be one of {', '.join(SOURCES)}, not '{source}'")


def write_features(path: str | os.PathLike, feature_set: FeatureSet) -> None:
    """Write a feature file atomically (same features give the same bytes)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.create_dataset("features", data=feature_set.features, track_times=False)
        h5.create_dataset("indices", data=feature_set.indices.astype(np.int64),
                          track_times=False)
        h5.create_dataset("labels", data=feature_set.labels.astype(np.int64), track_times=False)
        h5.create_dataset("splits", data=feature_set.splits.astype("S5"), track_times=False)
        if feature_set.max_softmax is not None:
            h5.create_dataset("max_softmax", data=feature_set.max_softmax, track_times=False)
        h5.attrs["class_names"] = list(feature_set.class_names)
        for key, value in feature_set.attrs.items():
            h5.attrs[key] = value


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file written by :func:`write_features`."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5:
                raise TomosiftError(f"{path}: not a tomosift feature file (no 'features')")
            attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                     for k, v in h5.attrs.items() if k != "class_names"}
            return FeatureSet(
                h5["features"][()], h5["indices"][()], h5["labels"][()],
                h5["splits"][()].astype(str), [str(n) for n in h5.attrs["class_names"]],
                attrs, h5["max_softmax"][()] if "max_softmax" in h5 else None)
    except OSError as error:
        raise TomosiftError(f"{path}: not a readable HDF5 file ({error})") from error
