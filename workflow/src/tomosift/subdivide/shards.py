"""CNN features of one shard of a dataset, resumable, for datasets of any size.

Shard ``s`` of ``S`` is the contiguous index range ``[N·s // S, N·(s+1) // S)``. Its work is
done in parts of ``part_size`` particles, each written atomically to
``<out>.parts/part_<p>.npz`` with the identity of the model (SHA-256 of its file) and of the
data (:func:`tomosift.classify.inputs.dataset_identity`) inside; a restarted run keeps the
valid parts and computes only the others. The feature file (the format of
:func:`tomosift.discovery.features.write_features`) is gathered from the parts, after which
the parts folder is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from tomosift.discovery.features import FeatureSet, write_features
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.progress import progress_bar

PART_SIZE = 4096
VOXEL_SIZE_TOLERANCE = 0.01  # relative


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_range(n_particles: int, shard: int, n_shards: int) -> tuple[int, int]:
    """[start, stop) of shard ``shard`` (0-based) of ``n_shards`` over N particles."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise TomosiftError(f"shard must lie in 0..{n_shards - 1} (n_shards {n_shards}), "
                            f"got {shard}")
    return n_particles * shard // n_shards, n_particles * (shard + 1) // n_shards


def check_model_matches(model_file: dict, model_path: str | os.PathLike,
                        data_path: str | os.PathLike, box_voxels: int,
                        voxel_size_nm: float | None) -> None:
    """Refuse (one line naming both files and both values) a RIF-SVM, or a CNN trained on
    another box, or on another voxel size (beyond 1%) than the data's. A model file that does
    not record its training voxel size is accepted on its box alone."""
    if model_file["method"] == "rif-svm":
        raise TomosiftError(f"{model_path}: a RIF-SVM model has no CNN features; subdivide "
                            "needs a CNN model")
    model_box = int(model_file["box_voxels"])
    if model_box != int(box_voxels):
        raise TomosiftError(f"{model_path} was trained on a box of {model_box} voxels, "
                            f"{data_path} has {int(box_voxels)}")
    model_voxel = (model_file.get("trained_on") or {}).get("voxel_size_nm")
    if model_voxel is not None and voxel_size_nm is not None:
        if abs(float(model_voxel) - voxel_size_nm) > VOXEL_SIZE_TOLERANCE * float(model_voxel):
            raise TomosiftError(f"{model_path} was trained on voxels of {float(model_voxel):g} "
                                f"nm, {data_path} has {voxel_size_nm:g} nm")


def input_sign(model_file: dict, data_polarity: str | None) -> float:
    """+1, or -1 when the data's particles have the other polarity (dark / white) than the
    training data's: the network must see particles as it saw them in training. Models or
    data that do not record a polarity are taken as they are."""
    trained = (model_file.get("trained_on") or {}).get("polarity")
    if trained is None or data_polarity is None or trained == data_polarity:
        return 1.0
    return -1.0


def data_geometry(data_path: str | os.PathLike) -> dict:
    """N, box, voxel size (nm or None), labels (N,), splits (N,), class names and the RELION
    optics columns the attributes give of a dataset file (volumes stay on disk)."""
    from tomosift.datasets import class_names_of, open_dataset

    with open_dataset(data_path) as h5:
        from tomosift.tomograms.relion import optics_columns_of

        voxel = h5.attrs.get("voxel_size_nm")
        polarity = h5.attrs.get("polarity")
        return {"n": int(h5["volumes"].shape[0]), "box": int(h5["volumes"].shape[1]),
                "optics_columns": optics_columns_of(dict(h5.attrs)),
                "voxel_size_nm": None if voxel is None else float(voxel),
                "polarity": None if polarity is None else str(polarity),
                "labels": h5["labels"][()].astype(np.int64),
                "splits": h5["split"][()].astype(str), "class_names": class_names_of(h5)}


def parts_folder(out_path: str | os.PathLike) -> Path:
    return Path(f"{out_path}.parts")


def _identity(model_sha: str, data_identity: str, start: int, stop: int) -> str:
    return f"model {model_sha}; data {data_identity}; range {start}-{stop}"


def _read_part(path: Path, identity: str, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A part's (features, max_softmax), or None when missing, unreadable or not this work's."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as part:
            if str(part["identity"]) != identity:
                return None
            features, softmax = part["features"], part["max_softmax"]
    except (OSError, ValueError, KeyError):
        return None
    if features.ndim != 2 or features.shape[1] != width or len(softmax) != len(features):
        return None
    return features, softmax


def _write_part(path: Path, identity: str, features: np.ndarray, softmax: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, identity=np.array(identity), features=features, max_softmax=softmax)


def read_feature_identity(path: str | os.PathLike) -> dict | None:
    """The identity attributes of a feature file written by :func:`shard_features`, or None."""
    try:
        with h5py.File(path, "r") as h5:
            return {k: h5.attrs[k].item() if hasattr(h5.attrs[k], "item") else h5.attrs[k]
                    for k in ("model_sha256", "data_identity", "index_start", "index_stop")
                    if k in h5.attrs}
    except OSError:
        return None


def shard_features(model_path: str | os.PathLike, data_path: str | os.PathLike,
                   out_path: str | os.PathLike, shard: int = 0, n_shards: int = 1,
                   batch_size: int = 64, workers: int = 0, device: str = "auto",
                   threads: int | None = None, progress: bool = True,
                   part_size: int = PART_SIZE) -> Path:
    """Logits (float32, (n, L)) and maximum softmax of the particles of one shard, written to
    the feature file ``out_path`` (``indices`` are dataset indices; attributes name the model
    with its SHA-256, the data with its identity, the shard and its index range).

    A feature file already there for the same model, data and range is kept as it is.
    """
    import torch

    from tomosift.classify.devices import as_input, choose_device, limited_threads
    from tomosift.classify.inputs import dataset_identity
    from tomosift.classify.modelfile import load_model
    from tomosift.classify.predict import restore_cnn
    from tomosift.subdivide.loader import make_loader

    out_path = Path(out_path)
    if part_size < 1:
        raise TomosiftError(f"part_size must be >= 1, got {part_size}")
    model_file = load_model(model_path)
    geometry = data_geometry(data_path)
    check_model_matches(model_file, model_path, data_path, geometry["box"],
                        geometry["voxel_size_nm"])
    start, stop = shard_range(geometry["n"], shard, n_shards)
    model_sha = file_sha256(model_path)
    data_id = dataset_identity(data_path)
    existing = read_feature_identity(out_path) if out_path.is_file() else None
    if existing == {"model_sha256": model_sha, "data_identity": data_id,
                    "index_start": start, "index_stop": stop}:
        return out_path
    settings = model_file["settings"]
    width = len(model_file["class_names"])
    folder = parts_folder(out_path)
    parts = [(a, min(a + part_size, stop)) for a in range(start, stop, part_size)]
    # One array for the shard, filled in place: per-batch result arrays kept alive between
    # the forward passes' large temporaries fragment the heap and raise the peak RSS.
    features = np.zeros((stop - start, width), dtype=np.float32)
    maxima = np.zeros(stop - start, dtype=np.float32)
    pending = []
    for p, (a, b) in enumerate(parts):
        found = _read_part(folder / f"part_{p:05d}.npz", _identity(model_sha, data_id, a, b),
                           width)
        if found is not None and len(found[0]) == b - a:
            features[a - start : b - start], maxima[a - start : b - start] = found
        else:
            pending.append(p)
    with limited_threads(threads):
        torch_device = choose_device(device)
        model = restore_cnn(model_file, torch_device)
        bar = progress_bar(total=sum(parts[p][1] - parts[p][0] for p in pending),
                           desc=f"{out_path.name} features", unit="subtomo", enabled=progress)
        with bar:
            for run in _contiguous(pending):
                first, last = parts[run[0]][0], parts[run[-1]][1]
                loader = make_loader(data_path, first, last, batch_size, workers,
                                     pin_memory=torch_device.type == "cuda",
                                     normalise=settings["normalise"],
                                     input_binning=settings.get("input_binning", 1),
                                     part_size=part_size,
                                     sign=input_sign(model_file, geometry["polarity"]))
                p = run[0]
                for volumes, a, b in loader:
                    inputs = as_input(volumes, torch_device)
                    with torch.inference_mode():
                        logits = model(inputs).float()
                        features[a - start : b - start] = logits.cpu().numpy()
                        maxima[a - start : b - start] = (
                            torch.softmax(logits, dim=1).amax(dim=1).cpu().numpy())
                    del inputs, logits, volumes
                    bar.update(b - a)
                    if b == parts[p][1]:
                        lo, hi = parts[p][0] - start, parts[p][1] - start
                        _write_part(folder / f"part_{p:05d}.npz",
                                    _identity(model_sha, data_id, *parts[p]),
                                    features[lo:hi], maxima[lo:hi])
                        p += 1
    attrs = {"source": "cnn", "layer": "logits", "model": str(model_path),
             "model_sha256": model_sha, "model_method": model_file["method"],
             "training_classes": list(model_file["class_names"]),
             "excluded_classes": list(settings.get("exclude_classes", [])),
             "data": str(data_path), "data_identity": data_id, "shard": int(shard),
             "n_shards": int(n_shards), "index_start": int(start), "index_stop": int(stop),
             "n_particles": int(geometry["n"]),
             "input_sign": input_sign(model_file, geometry["polarity"])}
    write_features(out_path, FeatureSet(
        features, np.arange(start, stop, dtype=np.int64), geometry["labels"][start:stop],
        geometry["splits"][start:stop], geometry["class_names"], attrs, maxima))
    shutil.rmtree(folder, ignore_errors=True)
    return out_path


def _contiguous(numbers: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and runs[-1][-1] == number - 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return runs
