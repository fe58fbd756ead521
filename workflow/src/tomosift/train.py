"""Training and evaluating classifiers on simulated datasets (paper Section 3.2.1).

CNNs are trained as the paper did: SGD with Nesterov momentum 0.9, learning rate 0.01 decayed
per iteration as ``lr / (1 + decay * t)`` (Keras's ``decay``, 1e-6), batch 64, 20 epochs,
categorical cross-entropy. Volumes stream from the HDF5 file one batch at a time.

Normalisation: each subtomogram is scaled to zero mean and unit variance before it enters a
network (``normalise: per_subtomogram``, the default). The authors' code used the raw values.
We normalise because the simulator's SNR is set per particle, so raw intensities differ by
orders of magnitude between classes and datasets; unnormalised inputs make the fixed
learning rate of the paper's recipe too large for some datasets and too small for others.
``normalise: none`` reproduces the paper's choice.

Gradient clipping (tomosift's addition, ``clip_grad_norm: 1.0``): with the paper's learning
rate, Inception3D's output layer (786 080 inputs for a 40³ box) takes steps so large in the
first iterations that the loss jumps to ~15 and the network stalls at chance level; clipping
the gradient norm to 1 removes this (on the demo data: train accuracy 0.63 after 8 epochs
instead of 0.12) and leaves DSRF3D's learning unchanged. ``clip_grad_norm: null`` is the
paper's exact recipe.

Resuming: a checkpoint is written after every epoch (atomically); a killed job started again
continues from the last finished epoch. Shuffling and dropout are seeded per epoch from the
training seed, so an interrupted and resumed run gives the same weights as an uninterrupted one
(on the same device).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tomosift import __version__
from tomosift.datasets import class_names_of, open_dataset
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.models import build_model
from tomosift.recipe import ARCHITECTURES, TrainingSettings, method_architecture

MODEL_FORMAT = "tomosift-model-1"


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    seconds_per_subtomogram: float
    learning_rate: float


@dataclass
class SplitData:
    """Indices and labels of one split of a dataset file (volumes stay on disk)."""

    path: Path
    indices: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    box_voxels: int
    attrs: dict = field(default_factory=dict)


def read_split(path: str | os.PathLike, split: str = "train") -> SplitData:
    """Which particles form a split (``train``, ``test`` or ``all``) of a dataset file."""
    path = Path(path)
    with open_dataset(path) as h5:
        labels = h5["labels"][()].astype(np.int64)
        splits = h5["split"][()].astype(str)
        names = class_names_of(h5)
        box = int(h5["volumes"].shape[1])
        attrs = {k: _plain(v) for k, v in h5.attrs.items()}
    if split == "all":
        chosen = np.arange(len(labels))
    elif split in ("train", "test"):
        chosen = np.flatnonzero(splits == split)
    else:
        raise TomosiftError(f"split must be train, test or all, not '{split}'")
    if len(chosen) == 0:
        raise TomosiftError(f"{path}: the {split} split is empty")
    return SplitData(path, chosen, labels[chosen], names, box, attrs)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def normalise_volumes(volumes: np.ndarray) -> np.ndarray:
    """Each (n, n, n) volume of a (B, n, n, n) batch to zero mean and unit variance."""
    flat = volumes.reshape(len(volumes), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1, keepdims=True)
    return ((flat - mean) / np.maximum(std, 1e-8)).reshape(volumes.shape)


def binned_box(box_voxels: int, factor: int) -> int:
    """The box edge after Fourier binning by ``factor``; the binned box must stay even."""
    if factor != 1 and box_voxels % (2 * factor):
        raise TomosiftError(f"input_binning {factor} needs a box divisible by {2 * factor}, "
                            f"got {box_voxels}")
    return box_voxels // factor


def fourier_bin(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Bin a (B, n, n, n) batch to (B, n/factor, ...) by keeping its central frequencies.

    Fourier cropping: the output holds exactly the frequencies below 1/factor of the input's
    Nyquist frequency, unaliased, and its voxels are ``factor`` times larger. Values keep
    their scale (the mean is preserved). ``factor`` must divide n.
    """
    if factor == 1:
        return volumes
    n = volumes.shape[-1]
    m = binned_box(n, factor)
    spectrum = np.fft.rfftn(volumes, axes=(1, 2, 3))
    keep = np.r_[0 : m // 2, n - m // 2 : n]
    cropped = spectrum[:, keep][:, :, keep][..., : m // 2 + 1]
    return (np.fft.irfftn(cropped, s=(m, m, m), axes=(1, 2, 3)) / factor**3).astype(np.float32)


def read_volumes(h5, indices: np.ndarray, normalise: str, binning: int = 1) -> np.ndarray:
    """(B, n, n, n) float32 volumes at ``indices`` (any order) from an open dataset file,
    Fourier-binned by ``binning`` (n -> n / binning) and then normalised.

    Volumes are read one chunk at a time: h5py's point selections on a virtual dataset are
    about ten times slower than single-volume reads.
    """
    dataset = h5["volumes"]
    volumes = np.empty((len(indices), *dataset.shape[1:]), dtype=np.float32)
    for row, index in enumerate(indices):
        volumes[row] = dataset[int(index)]
    volumes = fourier_bin(volumes, binning)
    return normalise_volumes(volumes) if normalise == "per_subtomogram" else volumes


def augment_batch(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 180° rotations about x, y or z (or none) per subtomogram.

    These are the proper rotations that map a missing wedge about the y tilt axis onto itself,
    so augmented subtomograms stay physically possible.
    """
    planes = [None, (3, 4), (2, 4), (2, 3)]  # identity, about z, about y, about x
    choices = torch.randint(0, 4, (len(batch),), generator=generator)
    out = batch.clone()
    for i, choice in enumerate(choices.tolist()):
        if planes[choice] is not None:
            out[i] = torch.rot90(batch[i : i + 1], 2, planes[choice])[0]
    return out


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TomosiftError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def use_bfloat16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to compute in bfloat16 (mixed precision, float32 weights).

    ``auto``: on CUDA devices that support it, and on CPUs with native bfloat16 instructions
    (AVX512-BF16 or AMX), where it trains 1.5-2.4x faster (docs/benchmarks.md).
    """
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return bool(native)


def _prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to its device; channels-last memory on CPU (faster 3D convolutions)."""
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def _as_input(volumes: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    inputs = torch.as_tensor(volumes)
    if inputs.dim() == 4:
        inputs = inputs.unsqueeze(1)
    inputs = inputs.to(device, non_blocking=True)
    if device.type == "cpu":
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    return inputs


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0])


def train_cnn(
    data_path: str | os.PathLike,
    settings: TrainingSettings,
    out_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    method: str | None = None,
) -> list[EpochRecord]:
    """Train a CNN on the train split of a dataset file and save it to ``out_path``.

    Args:
        data_path: the dataset (HDF5, see :mod:`tomosift.datasets`).
        settings: the training recipe.
        out_path: the trained model file (written at the end, atomically).
        checkpoint_path: per-epoch checkpoint (default ``<out_path>.ckpt``); a matching one
            is resumed from and removed after success.
        progress: show a progress bar with loss and accuracy.
        stop_after_epochs: stop (without writing ``out_path``) after this many epochs in this
            call; for tests of interrupted runs.
        method: the name the model is saved under (default: the architecture); a config's
            named variant, such as ``dsrf3d-bin2``.

    Returns:
        The training history, one record per epoch.
    """
    out_path = Path(out_path)
    checkpoint_path = Path(checkpoint_path or f"{out_path}.ckpt")
    data = read_split(data_path, "train")
    device = choose_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    try:
        box = binned_box(data.box_voxels, settings.input_binning)
    except TomosiftError as error:
        raise TomosiftError(f"{data_path}: {error}") from None
    model = _prepare(build_model(settings.architecture, len(data.class_names), box,
                                 settings.dropout), device)
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                momentum=settings.momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda iteration: 1.0 / (1.0 + settings.lr_decay * iteration))
    history: list[EpochRecord] = []
    identity = {"settings": asdict(settings), "data": str(Path(data_path).resolve()),
                "n_train": len(data.indices)}
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if saved.get("identity") == identity:
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            schedule.load_state_dict(saved["schedule"])
            history = [EpochRecord(**record) for record in saved["history"]]
    use_bf16 = use_bfloat16(device, settings.precision)
    epochs_this_call = 0
    with open_dataset(data_path) as h5:
        for epoch in range(len(history), settings.epochs):
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return history
            record = _train_epoch(model, optimiser, schedule, h5, data, settings, epoch,
                                  device, use_bf16, progress)
            history.append(record)
            epochs_this_call += 1
            with atomic_path(checkpoint_path) as tmp:
                torch.save({"identity": identity, "model": model.state_dict(),
                            "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                            "history": [asdict(r) for r in history]}, tmp)
    save_model(out_path, {
        "method": method or settings.architecture,
        "architecture": settings.architecture,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "settings": asdict(settings),
        "history": [asdict(r) for r in history],
        "device": str(device) + (" (bfloat16 mixed precision)" if use_bf16 else ""),
    }, data)
    checkpoint_path.unlink(missing_ok=True)
    return history


def _train_epoch(model, optimiser, schedule, h5, data: SplitData, settings: TrainingSettings,
                 epoch: int, device, use_bf16: bool, progress: bool) -> EpochRecord:
    model.train()
    seed = _epoch_seed(settings.seed, epoch)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(data.indices))
    started = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), settings.batch_size)
    bar = tqdm(batches, desc=f"{settings.architecture} epoch {epoch + 1}/{settings.epochs}",
               unit="batch", disable=not progress, mininterval=2.0)
    for start in bar:
        chosen = order[start : start + settings.batch_size]
        volumes = read_volumes(h5, data.indices[chosen], settings.normalise,
                               settings.input_binning)
        inputs = torch.from_numpy(volumes).unsqueeze(1)
        if settings.augment:
            inputs = augment_batch(inputs, generator)
        inputs = _as_input(inputs, device)
        targets = torch.from_numpy(data.labels[chosen]).to(device)
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        if settings.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
        optimiser.step()
        schedule.step()
        total_loss += loss.item() * len(chosen)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(chosen)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - started
    return EpochRecord(epoch + 1, total_loss / seen, correct / seen, seconds, seconds / seen,
                       float(optimiser.param_groups[0]["lr"]))


def save_model(out_path: str | os.PathLike, content: dict, data: SplitData) -> None:
    """Save a trained model with its class names, box, dataset and tomosift version."""
    payload = {
        "format": MODEL_FORMAT,
        "tomosift_version": __version__,
        "class_names": data.class_names,
        "box_voxels": data.box_voxels,
        "trained_on": {"path": str(data.path), "n_train": len(data.indices),
                       **{k: data.attrs.get(k) for k in ("snr", "tilt_max_deg", "seed",
                                                         "reconstruction", "voxel_size_nm")}},
        **content,
    }
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | os.PathLike) -> dict:
    """Load a model file written by :func:`save_model` (a CNN or the RIF-SVM)."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise TomosiftError(f"{path}: not a tomosift model ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise TomosiftError(f"{path}: not a tomosift model file")
    return payload


def restore_cnn(payload: dict, device: torch.device | None = None) -> torch.nn.Module:
    """The network of a CNN model file, in evaluation mode."""
    settings = payload["settings"]
    box = binned_box(payload["box_voxels"], settings.get("input_binning", 1))
    model = build_model(payload["architecture"], len(payload["class_names"]), box,
                        settings.get("dropout"))
    model.load_state_dict(payload["state_dict"])
    return _prepare(model, device or torch.device("cpu")).eval()


def cnn_scores(model: torch.nn.Module, volumes: np.ndarray, device: torch.device,
               layer: str = "logits", bfloat16: bool = False) -> np.ndarray:
    """Linear scores (B, L) or last hidden features of a batch of normalised volumes."""
    if layer not in ("logits", "hidden"):
        raise TomosiftError(f"layer must be 'logits' or 'hidden', not '{layer}'")
    inputs = _as_input(np.ascontiguousarray(volumes), device)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
        outputs = model.hidden_features(inputs) if layer == "hidden" else model(inputs)
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
) -> tuple[SplitData, np.ndarray, float]:
    """Scores of every subtomogram of a split, streamed in batches.

    Returns:
        (the split, scores (N, L) — the linear pre-softmax outputs for CNNs (the structural
        features of the paper's Eq. 3), or SVM decision values for the RIF-SVM — and the
        seconds per subtomogram spent, reading included).
    """
    payload = load_model(model_path)
    data = read_split(data_path, split)
    if data.box_voxels != payload["box_voxels"]:
        raise TomosiftError(f"{data_path}: box {data.box_voxels}, the model was trained on "
                            f"{payload['box_voxels']}")
    started = time.perf_counter()
    outputs = []
    with open_dataset(data_path) as h5:
        if payload["method"] == "rif-svm":
            from tomosift.rif import features_from_dataset

            features = features_from_dataset(h5, data.indices, payload["rif_settings"],
                                             progress=progress)
            decision = payload["classifier"].decision_function(features)
            outputs.append(np.stack([-decision, decision], 1) if decision.ndim == 1
                           else decision)
        else:
            torch_device = choose_device(device)
            model = restore_cnn(payload, torch_device)
            normalise = payload["settings"]["normalise"]
            binning = payload["settings"].get("input_binning", 1)
            bfloat16 = use_bfloat16(torch_device, precision)
            for start in tqdm(range(0, len(data.indices), batch_size), desc="inference",
                              unit="batch", disable=not progress, mininterval=2.0):
                volumes = read_volumes(h5, data.indices[start : start + batch_size], normalise,
                                       binning)
                outputs.append(cnn_scores(model, volumes, torch_device, layer, bfloat16))
    seconds = (time.perf_counter() - started) / len(data.indices)
    return data, np.concatenate(outputs), seconds


def evaluate(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    split: str = "test",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Accuracy, per-class accuracy, confusion matrix and timings of a model on a split."""
    payload = load_model(model_path)
    data, scores, seconds = predict(model_path, data_path, split, device=device,
                                    progress=progress)
    if data.class_names != payload["class_names"]:
        raise TomosiftError(f"{data_path}: classes differ from those the model was trained on")
    predicted = scores.argmax(axis=1)
    n_classes = len(data.class_names)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    per_class = {name: float(confusion[i, i] / max(confusion[i].sum(), 1))
                 for i, name in enumerate(data.class_names)}
    history = payload.get("history", [])
    train_seconds = (float(np.mean([r["seconds_per_subtomogram"] for r in history]))
                     if history and isinstance(history, list) else
                     payload.get("train_seconds_per_subtomogram"))
    return {
        "method": payload["method"],
        "dataset": str(data_path),
        "split": split,
        "snr": data.attrs.get("snr"),
        "tilt_max_deg": data.attrs.get("tilt_max_deg"),
        "n_subtomograms": len(data.labels),
        "accuracy": float((predicted == data.labels).mean()),
        "per_class_accuracy": per_class,
        "class_names": data.class_names,
        "confusion_matrix": confusion.tolist(),
        "train_seconds_per_subtomogram_per_epoch": train_seconds,
        "inference_seconds_per_subtomogram": seconds,
        "trained_on_device": payload.get("device", "cpu"),
        "evaluated_on_device": "cpu" if payload["method"] == "rif-svm"
        else str(choose_device(device)),
        "epochs": len(history) if isinstance(history, list) else None,
    }


def train_rif_svm(
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    rif_settings=None,
    c_grid=None,
    gamma_grid=None,
    cv_folds: int = 3,
    seed: int = 1,
    progress: bool = True,
) -> dict:
    """The RIF-SVM baseline: rotation-invariant features of the train split and an RBF SVM
    whose C and gamma are chosen by cross-validation on the train split only.

    Returns:
        The training record saved with the model (chosen C and gamma, CV accuracy, timings).
    """
    from tomosift.rif import (
        DEFAULT_C_GRID,
        DEFAULT_GAMMA_GRID,
        RifSettings,
        RifSvm,
        features_from_dataset,
    )

    rif_settings = rif_settings or RifSettings()
    data = read_split(data_path, "train")
    started = time.perf_counter()
    with open_dataset(data_path) as h5:
        features = features_from_dataset(h5, data.indices, rif_settings, progress=progress)
    feature_seconds = time.perf_counter() - started
    classifier = RifSvm().fit(features, data.labels, c_grid or DEFAULT_C_GRID,
                              gamma_grid or DEFAULT_GAMMA_GRID, cv_folds, seed)
    total_seconds = time.perf_counter() - started
    record = {
        "feature_seconds_per_subtomogram": feature_seconds / len(data.indices),
        "fit_seconds": total_seconds - feature_seconds,
        "chosen_c": classifier.c,
        "chosen_gamma": classifier.gamma,
        "cv_accuracy": classifier.cv_score,
    }
    save_model(out_path, {
        "method": "rif-svm",
        "rif_settings": rif_settings,
        "classifier": classifier,
        "history": [],
        "training": record,
        "train_seconds_per_subtomogram": total_seconds / len(data.indices),
        "device": "cpu",
    }, data)
    return record


def train_method(
    method: str,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    classification: dict,
    seed: int = 1,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Train ``method`` (a CNN architecture, a named variant of one, or ``rif-svm``) with the
    workflow's ``classification`` settings (see the config schema)."""
    if method == "rif-svm":
        from tomosift.rif import RifSettings

        rif = classification.get("rif", {})
        return train_rif_svm(
            data_path, out_path,
            RifSettings(max_degree=rif.get("max_degree", 10), shells=rif.get("shells")),
            rif.get("c_grid"), rif.get("gamma_grid"), rif.get("cv_folds", 3), seed, progress,
        )
    return train_cnn(data_path, settings_from_config(classification, method, seed), out_path,
                     checkpoint_path, progress, method=method)


def settings_from_config(classification: dict, method: str, seed: int) -> TrainingSettings:
    """CNN training settings of ``method`` (an architecture or a named variant) from the
    workflow's ``classification`` config section: the shared settings, then the method's own
    under ``classification.models``."""
    models = classification.get("models", {})
    architecture = method_architecture(method, models)
    if architecture not in ARCHITECTURES:
        raise TomosiftError(f"'{method}' is not a CNN; choose one of {', '.join(ARCHITECTURES)}")
    per_model = {k: v for k, v in models.get(method, {}).items() if k != "architecture"}
    base = TrainingSettings(
        architecture=architecture,
        epochs=classification["epochs"],
        batch_size=classification["batch_size"],
        learning_rate=classification["learning_rate"],
        lr_decay=classification["lr_decay"],
        momentum=classification["momentum"],
        normalise=classification["normalise"],
        seed=seed,
        device=classification["device"],
        threads=classification.get("threads"),
        precision=classification.get("precision", "auto"),
        clip_grad_norm=classification.get("clip_grad_norm", 1.0),
    )
    return replace(base, **per_model)
